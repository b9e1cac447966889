/* pair_style dpc: DeePMD-kit models in LAMMPS through dpc's libdeepmd_c.
 *
 *   pair_style dpc MODEL [MODEL2 ...] [out_file FILE] [out_freq N] [atomic] [fparam V ...]
 *   pair_coeff * * [NAME_OF_TYPE_1 NAME_OF_TYPE_2 ...]
 *
 * With several models, the first drives the dynamics and every out_freq steps the deviation
 * of the models' virials and forces is written to out_file, in DeePMD-kit's model_devi.out
 * layout. See docs/lammps.md.
 */
#ifndef DPC_PAIR_DPC_H
#define DPC_PAIR_DPC_H

#include <cstdio>
#include <string>
#include <vector>

#include "deepmd/c_api.h"
#include "pair.h"

namespace LAMMPS_NS {

class PairDPC : public Pair {
 public:
  explicit PairDPC(class LAMMPS *);
  ~PairDPC() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 private:
  void load_models(const std::vector<std::string> &paths);
  void release_models();
  void check(const char *what);
  void write_deviation(int nlocal, const std::vector<double> &virials);

  DP_DeepPot *pot = nullptr;            // one model
  DP_DeepPotModelDevi *devi = nullptr;  // several models
  int nmodels = 0;
  double cutoff = 0.0;
  double ghost_cutoff = 0.0;  // how far ghosts must reach without an atom map (DPA-3)
  std::vector<std::string> model_types;  // the model's type map
  std::vector<int> type_of;              // LAMMPS type - 1 -> model type (-1: not modelled)
  std::vector<double> fparam;

  std::string out_file;
  int out_freq = 0;
  bool out_atomic = false;
  FILE *out = nullptr;

  // Unit conversion: the model works in eV and Angstrom.
  double energy_unit = 1.0;    // LAMMPS energy units per eV
  double distance_unit = 1.0;  // LAMMPS distance units per Angstrom

  // Per-model forces on all atoms, folded onto their owners by reverse communication when
  // the deviation is written.
  std::vector<double> model_forces;
  int nall_forces = 0;
};

}  // namespace LAMMPS_NS

#endif
