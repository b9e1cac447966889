/*
 * dpc's libdeepmd_c: DeePMD-kit's C API, implemented without TensorFlow or PyTorch.
 *
 * Written for dpc from DeePMD-kit's documented interface (C API version 29): the same
 * function names, argument orders and array layouts, so code written against DeePMD-kit's
 * c_api.h (or its header-only deepmd.hpp) builds and runs against this library.
 *
 * Conventions (as in DeePMD-kit):
 *  - Arrays are row-major: coord [nframes][natoms][3], cell [nframes][9] (rows are the
 *    cell vectors; NULL for a non-periodic system), force like coord, virial [nframes][9],
 *    atomic_energy [nframes][natoms], atomic_virial [nframes][natoms][9].
 *  - Output arrays are allocated by the caller; pass NULL for the ones not wanted.
 *  - Nothing aborts or throws: after each call, DP_*CheckOK returns "" on success or the
 *    error message; every string returned is freed with DP_DeleteChar. A failed call leaves
 *    the output arrays untouched.
 *  - Atoms of negative type are virtual: they take no part and get zero outputs.
 */
#ifndef DPC_DEEPMD_C_API_H
#define DPC_DEEPMD_C_API_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The C API version this library implements. */
#define DP_C_API_VERSION 29

/* ------------------------------------------------------------------ neighbour lists */

/** An MD code's neighbour list (LAMMPS layout). The library keeps the pointers, so the
 *  arrays must stay valid while the list is used. */
typedef struct DP_Nlist DP_Nlist;

/** inum local atoms; ilist[ii] is the atom of row ii, numneigh[ii] its neighbour count,
 *  firstneigh[ii] its neighbour indices (locals then ghosts, any order, rcut + skin). */
extern DP_Nlist* DP_NewNlist(int inum_, int* ilist_, int* numneigh_, int** firstneigh_);

/** DP_NewNlist with a domain-decomposition communication pattern. dpc accepts the pattern
 *  and does not use it: a message-passing model (DPA-3) without the atom mapping evaluates
 *  its ghost atoms as centres too, which needs ghosts out to dpc_DeepPotGetGhostCutoff. */
extern DP_Nlist* DP_NewNlist_comm(int inum_, int* ilist_, int* numneigh_, int** firstneigh_,
                                  int nswap, int* sendnum, int* recvnum, int* firstrecv,
                                  int** sendlist, int* sendproc, int* recvproc, void* world,
                                  int nprocs);

/** Bit mask applied to every neighbour index (LAMMPS: NEIGHMASK). */
extern void DP_NlistSetMask(DP_Nlist* nl, int mask);

/** Extended atom -> the local atom it images, nall entries (kept by pointer). */
extern void DP_NlistSetMapping(DP_Nlist* nl, int* mapping);

extern void DP_DeleteNlist(DP_Nlist* nl);

extern const char* DP_NlistCheckOK(DP_Nlist* nl);

/* ------------------------------------------------------------------ models */

/** A loaded model. DP_DeepBaseModel is the same object seen through the base-model API. */
typedef struct DP_DeepPot DP_DeepPot;
typedef struct DP_DeepPot DP_DeepBaseModel;

/** Several models evaluated together for model deviation. */
typedef struct DP_DeepPotModelDevi DP_DeepPotModelDevi;
typedef struct DP_DeepPotModelDevi DP_DeepBaseModelDevi;

/** Load a model file in any format dpc reads (.dp .yaml .pth .pb .pbtxt .hlo .xlo .pte
 *  .pt2 .json+.pdiparams). */
extern DP_DeepPot* DP_NewDeepPot(const char* c_model);

/** As DP_NewDeepPot; c_file_content (if not empty) holds the file's bytes. gpu_rank is
 *  accepted and ignored (dpc's library evaluates on the CPU). Deprecated: the content is
 *  read up to its first NUL byte; use DP_NewDeepPotWithParam2. */
extern DP_DeepPot* DP_NewDeepPotWithParam(const char* c_model, const int gpu_rank,
                                          const char* c_file_content);

/** As DP_NewDeepPot; if size_file_content > 0, c_file_content holds the file's bytes
 *  (c_model still names the format by its extension). */
extern DP_DeepPot* DP_NewDeepPotWithParam2(const char* c_model, const int gpu_rank,
                                           const char* c_file_content,
                                           const int size_file_content);

extern void DP_DeleteDeepPot(DP_DeepPot* dp);
extern void DP_DeleteDeepBaseModel(DP_DeepBaseModel* dp);

/* Compute: the library builds the neighbour list (periodic if cell is not NULL). */

extern void DP_DeepPotCompute(DP_DeepPot* dp, const int natom, const double* coord,
                              const int* atype, const double* cell, double* energy,
                              double* force, double* virial, double* atomic_energy,
                              double* atomic_virial);
extern void DP_DeepPotComputef(DP_DeepPot* dp, const int natom, const float* coord,
                               const int* atype, const float* cell, double* energy,
                               float* force, float* virial, float* atomic_energy,
                               float* atomic_virial);

/** nframes frames sharing atype; fparam [nframes][dim_fparam] (NULL: the model's
 *  default), aparam [nframes][natoms][dim_aparam]. */
extern void DP_DeepPotCompute2(DP_DeepPot* dp, const int nframes, const int natom,
                               const double* coord, const int* atype, const double* cell,
                               const double* fparam, const double* aparam, double* energy,
                               double* force, double* virial, double* atomic_energy,
                               double* atomic_virial);
extern void DP_DeepPotComputef2(DP_DeepPot* dp, const int nframes, const int natom,
                                const float* coord, const int* atype, const float* cell,
                                const float* fparam, const float* aparam, double* energy,
                                float* force, float* virial, float* atomic_energy,
                                float* atomic_virial);

/** As Compute2 with a charge/spin input (DPA-3/4 only; ignored by every model dpc
 *  evaluates, whose DP_DeepPotGetDimChgSpin is 0). */
extern void DP_DeepPotCompute3(DP_DeepPot* dp, const int nframes, const int natoms,
                               const double* coord, const int* atype, const double* cell,
                               const double* fparam, const double* aparam,
                               const double* charge_spin, double* energy, double* force,
                               double* virial, double* atomic_energy, double* atomic_virial);
extern void DP_DeepPotComputef3(DP_DeepPot* dp, const int nframes, const int natoms,
                                const float* coord, const int* atype, const float* cell,
                                const float* fparam, const float* aparam,
                                const float* charge_spin, double* energy, float* force,
                                float* virial, float* atomic_energy, float* atomic_virial);

/** Frames with their own types: atype [nframes][natoms]. */
extern void DP_DeepPotComputeMixedType(DP_DeepPot* dp, const int nframes, const int natoms,
                                       const double* coord, const int* atype,
                                       const double* cell, const double* fparam,
                                       const double* aparam, double* energy, double* force,
                                       double* virial, double* atomic_energy,
                                       double* atomic_virial);
extern void DP_DeepPotComputeMixedTypef(DP_DeepPot* dp, const int nframes, const int natoms,
                                        const float* coord, const int* atype,
                                        const float* cell, const float* fparam,
                                        const float* aparam, double* energy, float* force,
                                        float* virial, float* atomic_energy,
                                        float* atomic_virial);

/* ComputeNList: the MD code's neighbour list. natom counts local and ghost atoms, ghosts
 * last (nghost of them); neighbours beyond the cutoff are dropped. The list is copied when
 * ago == 0 and reused while ago > 0. Forces, atomic energies and atomic virials are given
 * per atom, ghosts included, for the MD code to reverse-communicate; cell is not used.
 * aparam is [nframes][natom - nghost][dim_aparam]. */

extern void DP_DeepPotComputeNList(DP_DeepPot* dp, const int natom, const double* coord,
                                   const int* atype, const double* cell, const int nghost,
                                   const DP_Nlist* nlist, const int ago, double* energy,
                                   double* force, double* virial, double* atomic_energy,
                                   double* atomic_virial);
extern void DP_DeepPotComputeNListf(DP_DeepPot* dp, const int natom, const float* coord,
                                    const int* atype, const float* cell, const int nghost,
                                    const DP_Nlist* nlist, const int ago, double* energy,
                                    float* force, float* virial, float* atomic_energy,
                                    float* atomic_virial);
extern void DP_DeepPotComputeNList2(DP_DeepPot* dp, const int nframes, const int natom,
                                    const double* coord, const int* atype, const double* cell,
                                    const int nghost, const DP_Nlist* nlist, const int ago,
                                    const double* fparam, const double* aparam,
                                    double* energy, double* force, double* virial,
                                    double* atomic_energy, double* atomic_virial);
extern void DP_DeepPotComputeNListf2(DP_DeepPot* dp, const int nframes, const int natom,
                                     const float* coord, const int* atype, const float* cell,
                                     const int nghost, const DP_Nlist* nlist, const int ago,
                                     const float* fparam, const float* aparam,
                                     double* energy, float* force, float* virial,
                                     float* atomic_energy, float* atomic_virial);
extern void DP_DeepPotComputeNList3(DP_DeepPot* dp, const int nframes, const int natoms,
                                    const double* coord, const int* atype, const double* cell,
                                    const int nghost, const DP_Nlist* nlist, const int ago,
                                    const double* fparam, const double* aparam,
                                    const double* charge_spin, double* energy, double* force,
                                    double* virial, double* atomic_energy,
                                    double* atomic_virial);
extern void DP_DeepPotComputeNListf3(DP_DeepPot* dp, const int nframes, const int natoms,
                                     const float* coord, const int* atype, const float* cell,
                                     const int nghost, const DP_Nlist* nlist, const int ago,
                                     const float* fparam, const float* aparam,
                                     const float* charge_spin, double* energy, float* force,
                                     float* virial, float* atomic_energy,
                                     float* atomic_virial);

/* Device-edge inference (GPU graph inputs): not offered; the queries answer false and the
 * compute calls record an error. */
extern bool DP_DeepPotSupportsDeviceEdgeInference(DP_DeepPot* dp);
extern bool DP_DeepPotUsesCanonicalGraphInference(DP_DeepPot* dp);
extern bool DP_DeepPotUsesFP32EdgeVectors(DP_DeepPot* dp);
extern void DP_DeepPotComputeEdgesGPU(DP_DeepPot* dp, double* d_atom_energy, double* d_force,
                                      double* d_atom_virial, const double* d_coord,
                                      const int* d_atype, const int* d_edge_index,
                                      const double* d_edge_vec, int nloc, int nedge,
                                      const double* fparam, int64_t fparam_size,
                                      const double* aparam, int64_t aparam_size,
                                      int nall_nodes, const DP_Nlist* comm_nlist);
extern void DP_DeepPotComputeEdgesGPUFloat32(
    DP_DeepPot* dp, double* d_atom_energy, double* d_force, double* d_atom_virial,
    const double* d_coord, const int* d_atype, const int* d_edge_index,
    const float* d_edge_vec, int nloc, int nedge, const double* fparam, int64_t fparam_size,
    const double* aparam, int64_t aparam_size, int nall_nodes, const DP_Nlist* comm_nlist);
extern void DP_DeepPotComputeCanonicalGraphGPU(
    DP_DeepPot* dp, double* d_atom_energy, double* d_force, double* d_atom_virial,
    const int64_t* d_atype, const int64_t* d_source, const float* d_edge_vec,
    const int64_t* d_destination_row_ptr, const int64_t* d_source_row_ptr,
    const int64_t* d_source_order, int nloc, int nall_nodes, int64_t edge_storage);

/* Model properties. */

extern double DP_DeepPotGetCutoff(DP_DeepPot* dp);

/** dpc extension: how far beyond the local atoms the ghost atoms must reach when their
 *  owners are not given (DP_NlistSetMapping), e.g. on several MPI ranks: the cutoff times
 *  the model's message-passing layers (DPA-3), else the cutoff. */
extern double dpc_DeepPotGetGhostCutoff(DP_DeepPot* dp);
extern int DP_DeepPotGetNumbTypes(DP_DeepPot* dp);
extern int DP_DeepPotGetNumbTypesSpin(DP_DeepPot* dp);
extern int DP_DeepPotGetDimFParam(DP_DeepPot* dp);
extern int DP_DeepPotGetDimAParam(DP_DeepPot* dp);
extern int DP_DeepPotGetDimChgSpin(DP_DeepPot* dp);
extern bool DP_DeepPotIsAParamNAll(DP_DeepPot* dp);
extern bool DP_DeepPotHasDefaultFParam(DP_DeepPot* dp);
/** Type names separated by spaces; free with DP_DeleteChar. */
extern const char* DP_DeepPotGetTypeMap(DP_DeepPot* dp);
extern const char* DP_DeepPotCheckOK(DP_DeepPot* dp);

extern double DP_DeepBaseModelGetCutoff(DP_DeepBaseModel* dpbase);
extern int DP_DeepBaseModelGetNumbTypes(DP_DeepBaseModel* dpbase);
extern int DP_DeepBaseModelGetNumbTypesSpin(DP_DeepBaseModel* dpbase);
extern int DP_DeepBaseModelGetDimFParam(DP_DeepBaseModel* dpbase);
extern int DP_DeepBaseModelGetDimAParam(DP_DeepBaseModel* dpbase);
extern bool DP_DeepBaseModelIsAParamNAll(DP_DeepBaseModel* dpbase);
extern bool DP_DeepBaseModelHasDefaultFParam(DP_DeepBaseModel* dpbase);
extern const char* DP_DeepBaseModelGetTypeMap(DP_DeepBaseModel* dpbase);
extern const char* DP_DeepBaseModelCheckOK(DP_DeepBaseModel* dpbase);

/* ------------------------------------------------------------------ model deviation */

/** Load n_models models; they must share the cutoff and the type map. */
extern DP_DeepPotModelDevi* DP_NewDeepPotModelDevi(const char** c_models, int n_models);
extern DP_DeepPotModelDevi* DP_NewDeepPotModelDeviWithParam(
    const char** c_models, const int n_models, const int gpu_rank,
    const char** c_file_contents, const int n_file_contents,
    const int* size_file_contents);
extern void DP_DeleteDeepPotModelDevi(DP_DeepPotModelDevi* dp);
extern void DP_DeleteDeepBaseModelDevi(DP_DeepBaseModelDevi* dp);

/* As the DP_DeepPot calls, for exactly one frame; outputs are laid out model by model:
 * energy [n_models], force [n_models][natoms][3], virial [n_models][9], ... */

extern void DP_DeepPotModelDeviCompute(DP_DeepPotModelDevi* dp, const int natom,
                                       const double* coord, const int* atype,
                                       const double* cell, double* energy, double* force,
                                       double* virial, double* atomic_energy,
                                       double* atomic_virial);
extern void DP_DeepPotModelDeviComputef(DP_DeepPotModelDevi* dp, const int natom,
                                        const float* coord, const int* atype,
                                        const float* cell, double* energy, float* force,
                                        float* virial, float* atomic_energy,
                                        float* atomic_virial);
extern void DP_DeepPotModelDeviCompute2(DP_DeepPotModelDevi* dp, const int nframes,
                                        const int natoms, const double* coord,
                                        const int* atype, const double* cell,
                                        const double* fparam, const double* aparam,
                                        double* energy, double* force, double* virial,
                                        double* atomic_energy, double* atomic_virial);
extern void DP_DeepPotModelDeviComputef2(DP_DeepPotModelDevi* dp, const int nframes,
                                         const int natoms, const float* coord,
                                         const int* atype, const float* cell,
                                         const float* fparam, const float* aparam,
                                         double* energy, float* force, float* virial,
                                         float* atomic_energy, float* atomic_virial);
extern void DP_DeepPotModelDeviCompute3(DP_DeepPotModelDevi* dp, const int nframes,
                                        const int natoms, const double* coord,
                                        const int* atype, const double* cell,
                                        const double* fparam, const double* aparam,
                                        const double* charge_spin, double* energy,
                                        double* force, double* virial,
                                        double* atomic_energy, double* atomic_virial);
extern void DP_DeepPotModelDeviComputef3(DP_DeepPotModelDevi* dp, const int nframes,
                                         const int natoms, const float* coord,
                                         const int* atype, const float* cell,
                                         const float* fparam, const float* aparam,
                                         const float* charge_spin, double* energy,
                                         float* force, float* virial, float* atomic_energy,
                                         float* atomic_virial);
extern void DP_DeepPotModelDeviComputeNList(DP_DeepPotModelDevi* dp, const int natom,
                                            const double* coord, const int* atype,
                                            const double* cell, const int nghost,
                                            const DP_Nlist* nlist, const int ago,
                                            double* energy, double* force, double* virial,
                                            double* atomic_energy, double* atomic_virial);
extern void DP_DeepPotModelDeviComputeNListf(DP_DeepPotModelDevi* dp, const int natom,
                                             const float* coord, const int* atype,
                                             const float* cell, const int nghost,
                                             const DP_Nlist* nlist, const int ago,
                                             double* energy, float* force, float* virial,
                                             float* atomic_energy, float* atomic_virial);
extern void DP_DeepPotModelDeviComputeNList2(
    DP_DeepPotModelDevi* dp, const int nframes, const int natoms, const double* coord,
    const int* atype, const double* cell, const int nghost, const DP_Nlist* nlist,
    const int ago, const double* fparam, const double* aparam, double* energy, double* force,
    double* virial, double* atomic_energy, double* atomic_virial);
extern void DP_DeepPotModelDeviComputeNListf2(
    DP_DeepPotModelDevi* dp, const int nframes, const int natoms, const float* coord,
    const int* atype, const float* cell, const int nghost, const DP_Nlist* nlist,
    const int ago, const float* fparam, const float* aparam, double* energy, float* force,
    float* virial, float* atomic_energy, float* atomic_virial);
extern void DP_DeepPotModelDeviComputeNList3(
    DP_DeepPotModelDevi* dp, const int nframes, const int natoms, const double* coord,
    const int* atype, const double* cell, const int nghost, const DP_Nlist* nlist,
    const int ago, const double* fparam, const double* aparam, const double* charge_spin,
    double* energy, double* force, double* virial, double* atomic_energy,
    double* atomic_virial);
extern void DP_DeepPotModelDeviComputeNListf3(
    DP_DeepPotModelDevi* dp, const int nframes, const int natoms, const float* coord,
    const int* atype, const float* cell, const int nghost, const DP_Nlist* nlist,
    const int ago, const float* fparam, const float* aparam, const float* charge_spin,
    double* energy, float* force, float* virial, float* atomic_energy,
    float* atomic_virial);

extern double DP_DeepPotModelDeviGetCutoff(DP_DeepPotModelDevi* dp);

/** dpc extension: the largest dpc_DeepPotGetGhostCutoff of the models. */
extern double dpc_DeepPotModelDeviGetGhostCutoff(DP_DeepPotModelDevi* dp);
extern int DP_DeepPotModelDeviGetNumbTypes(DP_DeepPotModelDevi* dp);
extern int DP_DeepPotModelDeviGetNumbTypesSpin(DP_DeepPotModelDevi* dp);
extern int DP_DeepPotModelDeviGetDimFParam(DP_DeepPotModelDevi* dp);
extern int DP_DeepPotModelDeviGetDimAParam(DP_DeepPotModelDevi* dp);
extern int DP_DeepPotModelDeviGetDimChgSpin(DP_DeepPotModelDevi* dp);
extern bool DP_DeepPotModelDeviIsAParamNAll(DP_DeepPotModelDevi* dp);
extern bool DP_DeepPotModelDeviHasDefaultFParam(DP_DeepPotModelDevi* dp);
extern const char* DP_DeepPotModelDeviCheckOK(DP_DeepPotModelDevi* dp);

extern double DP_DeepBaseModelDeviGetCutoff(DP_DeepBaseModelDevi* dpbase);
extern int DP_DeepBaseModelDeviGetNumbTypes(DP_DeepBaseModelDevi* dpbase);
extern int DP_DeepBaseModelDeviGetNumbTypesSpin(DP_DeepBaseModelDevi* dpbase);
extern int DP_DeepBaseModelDeviGetDimFParam(DP_DeepBaseModelDevi* dpbase);
extern int DP_DeepBaseModelDeviGetDimAParam(DP_DeepBaseModelDevi* dpbase);
extern bool DP_DeepBaseModelDeviIsAParamNAll(DP_DeepBaseModelDevi* dpbase);
extern bool DP_DeepBaseModelDeviHasDefaultFParam(DP_DeepBaseModelDevi* dpbase);
extern const char* DP_DeepBaseModelDeviCheckOK(DP_DeepBaseModelDevi* dpbase);

/* ------------------------------------------------------------------ utilities */

/** Print what this library is, each line prefixed with c_pre. */
extern void DP_PrintSummary(const char* c_pre);

/** A file's bytes ("" if it cannot be read); free with DP_DeleteChar. */
extern const char* DP_ReadFileToChar(const char* c_model);

/** A file's bytes with their count in *size; on failure the error message, with *size
 *  set to minus its length. Free with DP_DeleteChar. */
extern const char* DP_ReadFileToChar2(const char* c_model, int* size);

/** Select atoms whose type is in sel_type: fwd_map [natoms] (new index or -1), bkw_map
 *  [*nreal] (old index of each selected atom), *nghost_real selected ghosts. */
extern void DP_SelectByType(const int natoms, const int* atype, const int nghost,
                            const int nsel_type, const int* sel_type, int* fwd_map,
                            int* nreal, int* bkw_map, int* nghost_real);

/** out[fwd_map[i]][:] = in[i][:] for the nall1 rows of in; out has nall2 rows. */
extern void DP_SelectMapInt(const int* in, const int* fwd_map, const int stride,
                            const int nall1, const int nall2, int* out);

/** Free a string returned by this library. */
extern void DP_DeleteChar(const char* c_str);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DPC_DEEPMD_C_API_H */
