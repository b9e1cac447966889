/*
 * Check a model through DeePMD-kit's C API against expected values.
 *
 *   deeppot_check MODEL CASES [TOL]
 *
 * CASES is a whitespace-separated text file: the number of cases, then for each
 *   natoms nbox nfparam naparam
 *   box[nbox] coord[natoms*3] atype[natoms] fparam[nfparam] aparam[naparam]
 *   atomic_energy[natoms] force[natoms*3] atomic_virial[natoms*9]
 * (expected energy and virial are the sums of the atomic ones).
 *
 * Each case is evaluated four ways, each compared with the expected values within TOL
 * (default 1e-10):
 *   1. DP_DeepPotCompute2 (the library builds the neighbour list);
 *   2. DP_DeepPotComputeNList2 on a hand-built extended system: periodic images as ghost
 *      atoms, an unsorted rcut + 2 A neighbour list; ghost forces folded back by hand;
 *   3. the same again with ago = 1 (the library reuses its copy of the list);
 *   4. DP_DeepPotModelDeviComputeNList2 with the model loaded twice.
 * DP_DeepPotComputef2 (float) is checked within 1e-4 relative.
 * Exit status 0 when everything matches, 1 otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deepmd/c_api.h"

typedef struct {
  int natoms, nbox, nfparam, naparam;
  double box[9];
  double *coord, *fparam, *aparam, *atom_energy, *force, *atom_virial;
  int* atype;
} Case;

static int failures = 0;

static double* read_doubles(FILE* f, int n) {
  double* v = calloc(n > 0 ? n : 1, sizeof(double));
  for (int i = 0; i < n; ++i) {
    if (fscanf(f, "%lf", &v[i]) != 1) {
      fprintf(stderr, "cases file ends early\n");
      exit(2);
    }
  }
  return v;
}

static int check_error(const char* what, const char* err) {
  int ok = err[0] == '\0';
  if (!ok) {
    printf("FAIL %s: %s\n", what, err);
    failures++;
  }
  DP_DeleteChar(err);
  return ok;
}

/* Largest |a - b| over n values; report and count a failure above tol. */
static void compare(const char* label, const char* what, const double* a, const double* b,
                    int n, double tol, int relative) {
  double worst = 0.0;
  for (int i = 0; i < n; ++i) {
    double d = fabs(a[i] - b[i]);
    if (relative) d /= fmax(1.0, fabs(b[i]));
    if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
  }
  int ok = worst <= tol;
  printf("%s %-14s %-14s max %s diff %.3e\n", ok ? "ok  " : "FAIL", label, what,
         relative ? "rel" : "abs", worst);
  if (!ok) failures++;
}

/* Expected totals from the atomic values. */
static void totals(const Case* c, double* energy, double* virial) {
  *energy = 0.0;
  for (int i = 0; i < c->natoms; ++i) *energy += c->atom_energy[i];
  for (int k = 0; k < 9; ++k) {
    virial[k] = 0.0;
    for (int i = 0; i < c->natoms; ++i) virial[k] += c->atom_virial[9 * i + k];
  }
}

static void compare_all(const char* label, const Case* c, double energy, const double* force,
                        const double* virial, const double* atom_energy,
                        const double* atom_virial, double tol) {
  double e_ref, v_ref[9];
  totals(c, &e_ref, v_ref);
  compare(label, "energy", &energy, &e_ref, 1, tol, 0);
  compare(label, "force", force, c->force, 3 * c->natoms, tol, 0);
  compare(label, "virial", virial, v_ref, 9, tol, 0);
  compare(label, "atomic_energy", atom_energy, c->atom_energy, c->natoms, tol, 0);
  compare(label, "atomic_virial", atom_virial, c->atom_virial, 9 * c->natoms, tol, 0);
}

/* The extended system an MD code would hand over: local atoms, then periodic images
 * within rcut + skin of some local atom, with the local atom each one images. */
typedef struct {
  int nall;
  double* coord;
  int* atype;
  int* mapping;
} Extended;

static Extended extend(const Case* c, double reach) {
  Extended e;
  int cap = c->natoms;
  e.nall = c->natoms;
  e.coord = malloc(sizeof(double) * 3 * cap);
  e.atype = malloc(sizeof(int) * cap);
  e.mapping = malloc(sizeof(int) * cap);
  memcpy(e.coord, c->coord, sizeof(double) * 3 * c->natoms);
  memcpy(e.atype, c->atype, sizeof(int) * c->natoms);
  for (int i = 0; i < c->natoms; ++i) e.mapping[i] = i;
  if (c->nbox != 9) return e;
  /* Enough images along each cell vector: reach over the spacing of the lattice planes. */
  const double* b = c->box;
  double cross[3][3];
  for (int k = 0; k < 3; ++k) {
    const double* u = b + 3 * ((k + 1) % 3);
    const double* v = b + 3 * ((k + 2) % 3);
    cross[k][0] = u[1] * v[2] - u[2] * v[1];
    cross[k][1] = u[2] * v[0] - u[0] * v[2];
    cross[k][2] = u[0] * v[1] - u[1] * v[0];
  }
  double volume = fabs(b[0] * cross[0][0] + b[1] * cross[0][1] + b[2] * cross[0][2]);
  int n[3];
  for (int k = 0; k < 3; ++k) {
    double area = sqrt(cross[k][0] * cross[k][0] + cross[k][1] * cross[k][1] +
                       cross[k][2] * cross[k][2]);
    n[k] = (int)ceil(reach / (volume / area)) + 1;
  }
  for (int a = -n[0]; a <= n[0]; ++a)
    for (int bb = -n[1]; bb <= n[1]; ++bb)
      for (int cc = -n[2]; cc <= n[2]; ++cc) {
        if (a == 0 && bb == 0 && cc == 0) continue;
        double shift[3];
        for (int d = 0; d < 3; ++d) shift[d] = a * b[d] + bb * b[3 + d] + cc * b[6 + d];
        for (int j = 0; j < c->natoms; ++j) {
          double x[3];
          for (int d = 0; d < 3; ++d) x[d] = c->coord[3 * j + d] + shift[d];
          int near = 0;
          for (int i = 0; i < c->natoms && !near; ++i) {
            double r2 = 0.0;
            for (int d = 0; d < 3; ++d) r2 += pow(x[d] - c->coord[3 * i + d], 2);
            near = r2 < reach * reach;
          }
          if (!near) continue;
          if (e.nall == cap) {
            cap *= 2;
            e.coord = realloc(e.coord, sizeof(double) * 3 * cap);
            e.atype = realloc(e.atype, sizeof(int) * cap);
            e.mapping = realloc(e.mapping, sizeof(int) * cap);
          }
          memcpy(e.coord + 3 * e.nall, x, sizeof x);
          e.atype[e.nall] = c->atype[j];
          e.mapping[e.nall] = j;
          e.nall++;
        }
      }
  return e;
}

/* Fold per-extended-atom values (stride values each) onto the local atoms. */
static void fold(const Extended* e, int nloc, const double* ext, double* local, int stride) {
  memset(local, 0, sizeof(double) * stride * nloc);
  for (int k = 0; k < e->nall; ++k)
    for (int d = 0; d < stride; ++d) local[stride * e->mapping[k] + d] += ext[stride * k + d];
}

static void run_case(DP_DeepPot* dp, DP_DeepPotModelDevi* devi, const Case* c, int index,
                     double tol) {
  int n = c->natoms;
  const double* box = c->nbox == 9 ? c->box : NULL;
  const double* fparam = c->nfparam ? c->fparam : NULL;
  const double* aparam = c->naparam ? c->aparam : NULL;
  char label[64];
  double energy, virial[9];
  double* force = malloc(sizeof(double) * 3 * n);
  double* atom_energy = malloc(sizeof(double) * n);
  double* atom_virial = malloc(sizeof(double) * 9 * n);

  /* 1. The library's own neighbour list. */
  snprintf(label, sizeof label, "case%d/Compute2", index);
  DP_DeepPotCompute2(dp, 1, n, c->coord, c->atype, box, fparam, aparam, &energy, force,
                     virial, atom_energy, atom_virial);
  if (check_error(label, DP_DeepPotCheckOK(dp)))
    compare_all(label, c, energy, force, virial, atom_energy, atom_virial, tol);

  /* Float: coordinates rounded to float move the answer by about 1e-7 relative. */
  {
    float* coordf = malloc(sizeof(float) * 3 * n);
    float* forcef = malloc(sizeof(float) * 3 * n);
    float boxf[9], virialf[9], fparamf[16];
    float* aparamf = malloc(sizeof(float) * (c->naparam + 1));
    for (int i = 0; i < 3 * n; ++i) coordf[i] = (float)c->coord[i];
    for (int i = 0; i < 9; ++i) boxf[i] = (float)c->box[i];
    for (int i = 0; i < c->nfparam && i < 16; ++i) fparamf[i] = (float)c->fparam[i];
    for (int i = 0; i < c->naparam; ++i) aparamf[i] = (float)c->aparam[i];
    double ef;
    snprintf(label, sizeof label, "case%d/Computef2", index);
    DP_DeepPotComputef2(dp, 1, n, coordf, c->atype, box ? boxf : NULL,
                        fparam ? fparamf : NULL, aparam ? aparamf : NULL, &ef, forcef,
                        virialf, NULL, NULL);
    if (check_error(label, DP_DeepPotCheckOK(dp))) {
      double e_ref, v_ref[9];
      totals(c, &e_ref, v_ref);
      double* f64 = malloc(sizeof(double) * 3 * n);
      for (int i = 0; i < 3 * n; ++i) f64[i] = forcef[i];
      compare(label, "energy", &ef, &e_ref, 1, 1e-4, 1);
      compare(label, "force", f64, c->force, 3 * n, 1e-4, 1);
      free(f64);
    }
    free(coordf);
    free(forcef);
    free(aparamf);
  }

  /* 2. An MD code's extended system and neighbour list. */
  double rcut = DP_DeepPotGetCutoff(dp), skin = 2.0;
  Extended e = extend(c, rcut + skin);
  int nghost = e.nall - n;
  int* ilist = malloc(sizeof(int) * n);
  int* numneigh = malloc(sizeof(int) * n);
  int** firstneigh = malloc(sizeof(int*) * n);
  for (int ii = 0; ii < n; ++ii) {
    /* Rows in reverse atom order, neighbours in reverse index order: nothing sorted. */
    int i = n - 1 - ii;
    ilist[ii] = i;
    firstneigh[ii] = malloc(sizeof(int) * e.nall);
    numneigh[ii] = 0;
    for (int j = e.nall - 1; j >= 0; --j) {
      if (j == i) continue;
      double r2 = 0.0;
      for (int d = 0; d < 3; ++d) r2 += pow(e.coord[3 * j + d] - c->coord[3 * i + d], 2);
      if (r2 < (rcut + skin) * (rcut + skin)) firstneigh[ii][numneigh[ii]++] = j;
    }
  }
  DP_Nlist* nlist = DP_NewNlist(n, ilist, numneigh, firstneigh);
  check_error("DP_NewNlist", DP_NlistCheckOK(nlist));
  DP_NlistSetMapping(nlist, e.mapping);
  DP_NlistSetMask(nlist, 0x1FFFFFFF); /* LAMMPS's NEIGHMASK */

  double* force_ext = malloc(sizeof(double) * 3 * e.nall);
  double* atom_energy_ext = malloc(sizeof(double) * e.nall);
  double* atom_virial_ext = malloc(sizeof(double) * 9 * e.nall);
  for (int ago = 0; ago <= 1; ++ago) {
    snprintf(label, sizeof label, "case%d/NList2/ago%d", index, ago);
    DP_DeepPotComputeNList2(dp, 1, e.nall, e.coord, e.atype, box, nghost, nlist, ago, fparam,
                            aparam, &energy, force_ext, virial, atom_energy_ext,
                            atom_virial_ext);
    if (!check_error(label, DP_DeepPotCheckOK(dp))) continue;
    for (int k = n; k < e.nall; ++k)
      if (atom_energy_ext[k] != 0.0) {
        printf("FAIL %s: ghost %d has atomic energy %g\n", label, k, atom_energy_ext[k]);
        failures++;
      }
    fold(&e, n, force_ext, force, 3);
    fold(&e, n, atom_virial_ext, atom_virial, 9);
    compare_all(label, c, energy, force, virial, atom_energy_ext, atom_virial, tol);
  }

  /* 3. Model deviation: two copies of the model, outputs one after the other. */
  {
    double energies[2], virials[18];
    double* forces = malloc(sizeof(double) * 2 * 3 * e.nall);
    double* atom_virials = malloc(sizeof(double) * 2 * 9 * e.nall);
    double* atom_energies = malloc(sizeof(double) * 2 * e.nall);
    snprintf(label, sizeof label, "case%d/ModelDevi", index);
    DP_DeepPotModelDeviComputeNList2(devi, 1, e.nall, e.coord, e.atype, box, nghost, nlist, 0,
                                     fparam, aparam, energies, forces, virials, atom_energies,
                                     atom_virials);
    if (check_error(label, DP_DeepPotModelDeviCheckOK(devi))) {
      for (int m = 0; m < 2; ++m) {
        char mlabel[80];
        snprintf(mlabel, sizeof mlabel, "%s/m%d", label, m);
        fold(&e, n, forces + m * 3 * e.nall, force, 3);
        fold(&e, n, atom_virials + m * 9 * e.nall, atom_virial, 9);
        compare_all(mlabel, c, energies[m], force, virials + 9 * m, atom_energies + m * e.nall,
                    atom_virial, tol);
      }
    }
    free(forces);
    free(atom_virials);
    free(atom_energies);
  }

  DP_DeleteNlist(nlist);
  for (int ii = 0; ii < n; ++ii) free(firstneigh[ii]);
  free(firstneigh);
  free(numneigh);
  free(ilist);
  free(e.coord);
  free(e.atype);
  free(e.mapping);
  free(force_ext);
  free(atom_energy_ext);
  free(atom_virial_ext);
  free(force);
  free(atom_energy);
  free(atom_virial);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL CASES [TOL]\n", argv[0]);
    return 2;
  }
  double tol = argc > 3 ? atof(argv[3]) : 1e-10;
  FILE* f = fopen(argv[2], "r");
  if (!f) {
    perror(argv[2]);
    return 2;
  }
  DP_DeepPot* dp = DP_NewDeepPot(argv[1]);
  if (!check_error("DP_NewDeepPot", DP_DeepPotCheckOK(dp))) return 1;
  const char* models[2] = {argv[1], argv[1]};
  DP_DeepPotModelDevi* devi = DP_NewDeepPotModelDevi(models, 2);
  if (!check_error("DP_NewDeepPotModelDevi", DP_DeepPotModelDeviCheckOK(devi))) return 1;

  const char* type_map = DP_DeepBaseModelGetTypeMap((DP_DeepBaseModel*)dp);
  printf("model %s: cutoff %g, %d types (%s), dim_fparam %d, dim_aparam %d\n", argv[1],
         DP_DeepBaseModelGetCutoff((DP_DeepBaseModel*)dp),
         DP_DeepBaseModelGetNumbTypes((DP_DeepBaseModel*)dp), type_map,
         DP_DeepPotGetDimFParam(dp), DP_DeepPotGetDimAParam(dp));
  DP_DeleteChar(type_map);

  int ncases;
  if (fscanf(f, "%d", &ncases) != 1) return 2;
  for (int k = 0; k < ncases; ++k) {
    Case c;
    if (fscanf(f, "%d %d %d %d", &c.natoms, &c.nbox, &c.nfparam, &c.naparam) != 4) return 2;
    memset(c.box, 0, sizeof c.box);
    double* box = read_doubles(f, c.nbox);
    memcpy(c.box, box, sizeof(double) * (c.nbox == 9 ? 9 : 0));
    free(box);
    c.coord = read_doubles(f, 3 * c.natoms);
    double* types = read_doubles(f, c.natoms);
    c.atype = malloc(sizeof(int) * c.natoms);
    for (int i = 0; i < c.natoms; ++i) c.atype[i] = (int)types[i];
    free(types);
    c.fparam = read_doubles(f, c.nfparam);
    c.aparam = read_doubles(f, c.naparam);
    c.atom_energy = read_doubles(f, c.natoms);
    c.force = read_doubles(f, 3 * c.natoms);
    c.atom_virial = read_doubles(f, 9 * c.natoms);
    run_case(dp, devi, &c, k, tol);
    free(c.coord);
    free(c.atype);
    free(c.fparam);
    free(c.aparam);
    free(c.atom_energy);
    free(c.force);
    free(c.atom_virial);
  }
  fclose(f);
  DP_DeleteDeepPotModelDevi(devi);
  DP_DeleteDeepPot(dp);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
