/* Registers pair_style dpc with LAMMPS's `plugin load` (LAMMPS built with the PLUGIN
 * package). The registration record's layout is LAMMPS's documented plugin interface
 * (https://docs.lammps.org/Developer_plugins.html), declared here so no LAMMPS source
 * file beyond the public headers is needed. */
#include "pair_dpc.h"

using namespace LAMMPS_NS;

namespace {

typedef void *(plugin_factory)(void *);

// LAMMPS's lammpsplugin_t: five strings, the creator (a union of function pointers, all
// pointer sized) and the DSO handle.
struct PluginRecord {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  plugin_factory *creator;
  void *handle;
};

typedef void (*plugin_register)(PluginRecord *, void *);

Pair *create_pair_dpc(LAMMPS *lmp) { return new PairDPC(lmp); }

}  // namespace

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  PluginRecord plugin;
#ifdef DPC_LAMMPS_VERSION
  plugin.version = DPC_LAMMPS_VERSION;
#else
  plugin.version = nullptr;
#endif
  plugin.style = "pair";
  plugin.name = "dpc";
  plugin.info = "dpc: DeePMD-kit models without TensorFlow or PyTorch";
  plugin.author = "the dpc developers";
  plugin.creator = reinterpret_cast<plugin_factory *>(&create_pair_dpc);
  plugin.handle = handle;
  reinterpret_cast<plugin_register>(regfunc)(&plugin, lmp);
}
