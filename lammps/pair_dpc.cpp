/* pair_style dpc: see pair_dpc.h and docs/lammps.md. */
#include "pair_dpc.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

using namespace LAMMPS_NS;

namespace {

// Boltzmann's constant in eV/K, as LAMMPS's metal units define it: LAMMPS energy units per
// eV follow from force->boltz in any unit style.
constexpr double BOLTZ_METAL = 8.617343e-5;

std::string take_message(const char *msg) {
  std::string s = msg ? msg : "";
  DP_DeleteChar(msg);
  return s;
}

}  // namespace

PairDPC::PairDPC(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // The model gives the virial itself (ghost forces make f.r wrong before reverse comm).
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_AVAIL;
  comm_reverse = 0;
}

PairDPC::~PairDPC() {
  release_models();
  if (out) fclose(out);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairDPC::release_models() {
  if (pot) DP_DeleteDeepPot(pot);
  if (devi) DP_DeleteDeepPotModelDevi(devi);
  pot = nullptr;
  devi = nullptr;
  nmodels = 0;
}

// Turn the library's error, if any, into a LAMMPS error on this rank.
void PairDPC::check(const char *what) {
  std::string msg = take_message(devi ? DP_DeepPotModelDeviCheckOK(devi) : DP_DeepPotCheckOK(pot));
  if (!msg.empty()) error->one(FLERR, "pair dpc: {}: {}", what, msg);
}

void PairDPC::load_models(const std::vector<std::string> &paths) {
  release_models();
  nmodels = static_cast<int>(paths.size());
  std::string type_map;
  if (nmodels == 1) {
    pot = DP_NewDeepPot(paths[0].c_str());
    std::string msg = take_message(DP_DeepPotCheckOK(pot));
    if (!msg.empty()) error->all(FLERR, "pair dpc: cannot load {}: {}", paths[0], msg);
    cutoff = DP_DeepPotGetCutoff(pot);
    ghost_cutoff = dpc_DeepPotGetGhostCutoff(pot);
    type_map = take_message(DP_DeepPotGetTypeMap(pot));
  } else {
    std::vector<const char *> names;
    for (const auto &p : paths) names.push_back(p.c_str());
    devi = DP_NewDeepPotModelDevi(names.data(), nmodels);
    std::string msg = take_message(DP_DeepPotModelDeviCheckOK(devi));
    if (!msg.empty()) error->all(FLERR, "pair dpc: cannot load the models: {}", msg);
    cutoff = DP_DeepPotModelDeviGetCutoff(devi);
    ghost_cutoff = dpc_DeepPotModelDeviGetGhostCutoff(devi);
    // The models share the type map (the library checks); read it from the first.
    DP_DeepPot *first = DP_NewDeepPot(paths[0].c_str());
    type_map = take_message(DP_DeepPotGetTypeMap(first));
    DP_DeleteDeepPot(first);
  }
  model_types = utils::split_words(type_map);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair dpc: {} model(s), cutoff {} A, types {}\n", nmodels, cutoff,
                   type_map);
}

void PairDPC::settings(int narg, char **arg) {
  if (narg < 1) error->all(FLERR, "pair_style dpc needs a model file");
  std::vector<std::string> models;
  int i = 0;
  auto is_keyword = [](const std::string &s) {
    return s == "out_file" || s == "out_freq" || s == "atomic" || s == "fparam";
  };
  while (i < narg && !is_keyword(arg[i])) models.emplace_back(arg[i++]);
  if (models.empty()) error->all(FLERR, "pair_style dpc needs a model file before {}", arg[0]);
  out_file = "model_devi.out";
  out_freq = 0;
  out_atomic = false;
  fparam.clear();
  while (i < narg) {
    std::string key = arg[i];
    if (key == "out_file") {
      if (i + 1 >= narg) error->all(FLERR, "pair_style dpc: out_file needs a file name");
      out_file = arg[i + 1];
      i += 2;
    } else if (key == "out_freq") {
      if (i + 1 >= narg) error->all(FLERR, "pair_style dpc: out_freq needs a number");
      out_freq = utils::inumeric(FLERR, arg[i + 1], false, lmp);
      if (out_freq < 0) error->all(FLERR, "pair_style dpc: out_freq must not be negative");
      i += 2;
    } else if (key == "atomic") {
      out_atomic = true;
      i += 1;
    } else if (key == "fparam") {
      ++i;
      while (i < narg && !is_keyword(arg[i]))
        fparam.push_back(utils::numeric(FLERR, arg[i++], false, lmp));
    } else {
      error->all(FLERR, "pair_style dpc: unknown keyword {}", key);
    }
  }
  load_models(models);
  if (nmodels > 1 && out_freq == 0) out_freq = 1;

  int dim_fparam = pot ? DP_DeepPotGetDimFParam(pot) : DP_DeepPotModelDeviGetDimFParam(devi);
  bool has_default = pot ? DP_DeepPotHasDefaultFParam(pot) : DP_DeepPotModelDeviHasDefaultFParam(devi);
  if (!fparam.empty() && static_cast<int>(fparam.size()) != dim_fparam)
    error->all(FLERR, "pair_style dpc: fparam has {} values, the model takes {}", fparam.size(),
               dim_fparam);
  if (fparam.empty() && dim_fparam > 0 && !has_default)
    error->all(FLERR, "pair_style dpc: the model needs fparam ({} values): add fparam V ...",
               dim_fparam);
  int dim_aparam = pot ? DP_DeepPotGetDimAParam(pot) : DP_DeepPotModelDeviGetDimAParam(devi);
  if (dim_aparam > 0)
    error->all(FLERR, "pair_style dpc: the model needs atomic parameters (aparam), which this "
                      "pair style cannot supply yet");

  if (nmodels > 1 && comm->me == 0) {
    if (out) fclose(out);
    out = fopen(out_file.c_str(), "w");
    if (!out) error->one(FLERR, "pair_style dpc: cannot open {}", out_file);
    fprintf(out, "%-12s %18s %18s %18s %18s %18s %18s\n", "#       step", "max_devi_v",
            "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f");
    fflush(out);
  }
  comm_reverse = nmodels > 1 ? 3 * nmodels : 0;
}

void PairDPC::coeff(int narg, char **arg) {
  if (!allocated) {
    int n = atom->ntypes;
    memory->create(setflag, n + 1, n + 1, "pair:setflag");
    memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
    allocated = 1;
  }
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for dpc must be: pair_coeff * * [type names]");
  int ntypes = atom->ntypes;
  type_of.assign(ntypes, -1);
  if (narg == 2) {
    // No names: LAMMPS type k is the model's type k - 1.
    if (ntypes > static_cast<int>(model_types.size()))
      error->all(FLERR,
                 "pair dpc: {} atom types but the model has {}; name them in pair_coeff * *",
                 ntypes, model_types.size());
    for (int t = 0; t < ntypes; ++t) type_of[t] = t;
  } else {
    if (narg - 2 != ntypes)
      error->all(FLERR, "pair_coeff * * needs one name per atom type ({}), got {}", ntypes,
                 narg - 2);
    for (int t = 0; t < ntypes; ++t) {
      std::string name = arg[2 + t];
      if (name == "NULL") continue;  // not modelled: no interaction through this style
      auto it = std::find(model_types.begin(), model_types.end(), name);
      if (it == model_types.end())
        error->all(FLERR, "pair dpc: type {} ({}) is not in the model's type map", t + 1, name);
      type_of[t] = static_cast<int>(it - model_types.begin());
    }
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
}

void PairDPC::init_style() {
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style dpc needs newton pair on (ghost forces are sent home)");
  if (strcmp(update->unit_style, "lj") == 0)
    error->all(FLERR, "pair_style dpc needs physical units (metal, real, ...), not lj");
  energy_unit = force->boltz / BOLTZ_METAL;
  distance_unit = force->angstrom;
  neighbor->add_request(this, NeighConst::REQ_FULL);
  // A message-passing model (DPA-3) reads atoms several cutoffs away. On one rank the atom
  // map gives every ghost's owner and rcut of ghosts suffice; otherwise the ghosts within
  // (layers - 1) rcut are evaluated as well, and need their own neighbours as ghosts.
  bool mapped = comm->nprocs == 1 && atom->map_style != Atom::MAP_NONE;
  if (ghost_cutoff > cutoff && !mapped) {
    double need = ghost_cutoff * distance_unit + neighbor->skin;
    if (comm->cutghostuser < need) {
      comm->cutghostuser = need;
      if (comm->me == 0)
        utils::logmesg(lmp,
                       "pair dpc: message-passing model without an atom map or on several "
                       "ranks: ghost cutoff set to {} (layers x cutoff + skin)\n",
                       need);
    }
  }
}

double PairDPC::init_one(int, int) {
  return cutoff * distance_unit;
}

void PairDPC::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  int nlocal = atom->nlocal;
  int nghost = atom->nghost;
  int nall = nlocal + nghost;
  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;

  std::vector<double> coord(3 * static_cast<size_t>(nall));
  std::vector<int> atype(nall);
  for (int i = 0; i < nall; ++i) {
    for (int d = 0; d < 3; ++d) coord[3 * i + d] = x[i][d] / distance_unit;
    atype[i] = type_of[type[i] - 1];
  }
  double box[9] = {0};
  box[0] = domain->h[0] / distance_unit;
  box[4] = domain->h[1] / distance_unit;
  box[8] = domain->h[2] / distance_unit;
  box[7] = domain->h[3] / distance_unit;  // yz
  box[6] = domain->h[4] / distance_unit;  // xz
  box[3] = domain->h[5] / distance_unit;  // xy

  DP_Nlist *nl = DP_NewNlist(list->inum, list->ilist, list->numneigh, list->firstneigh);
  DP_NlistSetMask(nl, NEIGHMASK);
  // On one rank every ghost is an image of a local atom: its owner, through the atom map,
  // is what message-passing models (DPA-3) read neighbours' features from.
  std::vector<int> owner;
  if (comm->nprocs == 1 && atom->map_style != Atom::MAP_NONE) {
    owner.resize(nall);
    for (int i = 0; i < nall; ++i) owner[i] = atom->map(atom->tag[i]);
    DP_NlistSetMapping(nl, owner.data());
  }
  int ago = neighbor->ago;
  const double *fp = fparam.empty() ? nullptr : fparam.data();

  bool atomic = eflag_atom || vflag_atom || cvflag_atom;
  double energy = 0.0;
  double virial9[9];
  std::vector<double> force(3 * static_cast<size_t>(nall));
  std::vector<double> atom_energy(atomic ? nall : 0), atom_virial(atomic ? 9 * nall : 0);
  std::vector<double> virials;
  if (nmodels == 1) {
    DP_DeepPotComputeNList2(pot, 1, nall, coord.data(), atype.data(), box, nghost, nl, ago, fp,
                            nullptr, &energy, force.data(), virial9,
                            atomic ? atom_energy.data() : nullptr,
                            atomic ? atom_virial.data() : nullptr);
    DP_DeleteNlist(nl);
    check("evaluating the model");
  } else {
    std::vector<double> energies(nmodels);
    virials.resize(9 * nmodels);
    model_forces.resize(3 * static_cast<size_t>(nall) * nmodels);
    std::vector<double> atom_energies(atomic ? nall * nmodels : 0);
    std::vector<double> atom_virials(atomic ? 9 * nall * nmodels : 0);
    DP_DeepPotModelDeviComputeNList2(devi, 1, nall, coord.data(), atype.data(), box, nghost, nl,
                                     ago, fp, nullptr, energies.data(), model_forces.data(),
                                     virials.data(), atomic ? atom_energies.data() : nullptr,
                                     atomic ? atom_virials.data() : nullptr);
    DP_DeleteNlist(nl);
    check("evaluating the models");
    // The first model drives the dynamics.
    energy = energies[0];
    std::copy(virials.begin(), virials.begin() + 9, virial9);
    std::copy(model_forces.begin(), model_forces.begin() + 3 * nall, force.begin());
    if (atomic) {
      std::copy(atom_energies.begin(), atom_energies.begin() + nall, atom_energy.begin());
      std::copy(atom_virials.begin(), atom_virials.begin() + 9 * nall, atom_virial.begin());
    }
  }

  const double force_unit = energy_unit / distance_unit;
  for (int i = 0; i < nall; ++i)
    for (int d = 0; d < 3; ++d) f[i][d] += force[3 * i + d] * force_unit;
  if (eflag_global) eng_vdwl += energy * energy_unit;
  if (vflag_global) {
    virial[0] += virial9[0] * energy_unit;
    virial[1] += virial9[4] * energy_unit;
    virial[2] += virial9[8] * energy_unit;
    virial[3] += 0.5 * (virial9[1] + virial9[3]) * energy_unit;
    virial[4] += 0.5 * (virial9[2] + virial9[6]) * energy_unit;
    virial[5] += 0.5 * (virial9[5] + virial9[7]) * energy_unit;
  }
  if (eflag_atom)
    for (int i = 0; i < nlocal; ++i) eatom[i] += atom_energy[i] * energy_unit;
  if (vflag_atom)
    for (int i = 0; i < nall; ++i) {
      const double *v = &atom_virial[9 * i];
      vatom[i][0] += v[0] * energy_unit;
      vatom[i][1] += v[4] * energy_unit;
      vatom[i][2] += v[8] * energy_unit;
      vatom[i][3] += 0.5 * (v[1] + v[3]) * energy_unit;
      vatom[i][4] += 0.5 * (v[2] + v[6]) * energy_unit;
      vatom[i][5] += 0.5 * (v[5] + v[7]) * energy_unit;
    }
  if (cvflag_atom)
    for (int i = 0; i < nall; ++i) {
      // LAMMPS's order: xx yy zz xy xz yz yx zx zy.
      static const int from[9] = {0, 4, 8, 1, 2, 5, 3, 6, 7};
      for (int k = 0; k < 9; ++k) cvatom[i][k] += atom_virial[9 * i + from[k]] * energy_unit;
    }

  if (nmodels > 1 && out_freq > 0 && update->ntimestep % out_freq == 0) {
    nall_forces = nall;
    comm->reverse_comm(this);
    write_deviation(nlocal, virials);
  }
}

// Ghost atoms' forces of every model, sent to the ranks that own the atoms.
int PairDPC::pack_reverse_comm(int n, int first, double *buf) {
  int m = 0;
  const size_t stride = 3 * static_cast<size_t>(nall_forces);
  for (int i = first; i < first + n; ++i)
    for (int k = 0; k < nmodels; ++k)
      for (int d = 0; d < 3; ++d) buf[m++] = model_forces[k * stride + 3 * i + d];
  return m;
}

void PairDPC::unpack_reverse_comm(int n, int *list_, double *buf) {
  int m = 0;
  const size_t stride = 3 * static_cast<size_t>(nall_forces);
  for (int ii = 0; ii < n; ++ii) {
    int i = list_[ii];
    for (int k = 0; k < nmodels; ++k)
      for (int d = 0; d < 3; ++d) model_forces[k * stride + 3 * i + d] += buf[m++];
  }
}

// DeePMD-kit's model deviation: per atom, the models' force spread
// sqrt(mean_k |F_k - mean F|^2); of the virial (per atom), the spread of each component.
void PairDPC::write_deviation(int nlocal, const std::vector<double> &virials) {
  const size_t stride = 3 * static_cast<size_t>(nall_forces);
  std::vector<double> spread(nlocal);
  double fmax = 0.0, fmin = std::numeric_limits<double>::max(), fsum = 0.0;
  for (int i = 0; i < nlocal; ++i) {
    double mean[3] = {0, 0, 0};
    for (int k = 0; k < nmodels; ++k)
      for (int d = 0; d < 3; ++d) mean[d] += model_forces[k * stride + 3 * i + d] / nmodels;
    double s = 0.0;
    for (int k = 0; k < nmodels; ++k)
      for (int d = 0; d < 3; ++d) {
        double dev = model_forces[k * stride + 3 * i + d] - mean[d];
        s += dev * dev;
      }
    spread[i] = std::sqrt(s / nmodels);
    fmax = std::max(fmax, spread[i]);
    fmin = std::min(fmin, spread[i]);
    fsum += spread[i];
  }
  double all_max = 0, all_min = 0, all_sum = 0;
  MPI_Reduce(&fmax, &all_max, 1, MPI_DOUBLE, MPI_MAX, 0, world);
  MPI_Reduce(&fmin, &all_min, 1, MPI_DOUBLE, MPI_MIN, 0, world);
  MPI_Reduce(&fsum, &all_sum, 1, MPI_DOUBLE, MPI_SUM, 0, world);
  double natoms = static_cast<double>(atom->natoms);
  std::vector<double> v_local(9 * nmodels), v_all(9 * nmodels);
  for (int k = 0; k < 9 * nmodels; ++k) v_local[k] = virials[k] / natoms;
  MPI_Reduce(v_local.data(), v_all.data(), 9 * nmodels, MPI_DOUBLE, MPI_SUM, 0, world);

  // Per-atom spreads, by atom id, for the `atomic` option.
  std::vector<double> by_id;
  if (out_atomic) {
    std::vector<double> tagged(2 * static_cast<size_t>(nlocal));
    for (int i = 0; i < nlocal; ++i) {
      tagged[2 * i] = static_cast<double>(atom->tag[i]);
      tagged[2 * i + 1] = spread[i];
    }
    int count = 2 * nlocal;
    std::vector<int> counts(comm->nprocs), offsets(comm->nprocs);
    MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, world);
    int total = 0;
    for (int r = 0; r < comm->nprocs; ++r) {
      offsets[r] = total;
      total += counts[r];
    }
    std::vector<double> gathered(comm->me == 0 ? total : 0);
    MPI_Gatherv(tagged.data(), count, MPI_DOUBLE, gathered.data(), counts.data(),
                offsets.data(), MPI_DOUBLE, 0, world);
    if (comm->me == 0) {
      by_id.assign(atom->natoms, 0.0);
      for (int k = 0; k + 1 < total; k += 2) {
        auto id = static_cast<bigint>(gathered[k]);
        if (id >= 1 && id <= atom->natoms) by_id[id - 1] = gathered[k + 1];
      }
    }
  }

  if (comm->me != 0 || !out) return;
  double vmax = 0, vmin = std::numeric_limits<double>::max(), vsq = 0;
  for (int c = 0; c < 9; ++c) {
    double mean = 0;
    for (int k = 0; k < nmodels; ++k) mean += v_all[9 * k + c] / nmodels;
    double s = 0;
    for (int k = 0; k < nmodels; ++k) s += (v_all[9 * k + c] - mean) * (v_all[9 * k + c] - mean);
    double sd = std::sqrt(s / nmodels);
    vmax = std::max(vmax, sd);
    vmin = std::min(vmin, sd);
    vsq += sd * sd;
  }
  const double force_unit = energy_unit / distance_unit;
  fprintf(out, "%12lld %18.10e %18.10e %18.10e %18.10e %18.10e %18.10e",
          static_cast<long long>(update->ntimestep), vmax * energy_unit, vmin * energy_unit,
          std::sqrt(vsq / 9) * energy_unit, all_max * force_unit, all_min * force_unit,
          all_sum / natoms * force_unit);
  for (double s : by_id) fprintf(out, " %18.10e", s * force_unit);
  fprintf(out, "\n");
  fflush(out);
}
