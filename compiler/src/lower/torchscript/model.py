class Model(Module):
  __parameters__ = []
  __buffers__ = [{{BUFFERS}}]
  training : bool
  model_def_script : str
{{ATTRS}}
  def forward(self: __torch__.dpc.Model,
    coord: Tensor,
    atype: Tensor,
    box: Optional[Tensor]=None,
    fparam: Optional[Tensor]=None,
    aparam: Optional[Tensor]=None,
    do_atomic_virial: bool=False,
    charge_spin: Optional[Tensor]=None) -> Dict[str, Tensor]:
    nf = (torch.size(atype))[0]
    nloc = (torch.size(atype))[-1]
    dev = ops.prim.device(coord)
    xyz = torch.to(torch.reshape(coord, [nf, nloc, 3]), 7)
    types = torch.to(torch.reshape(atype, [nf, nloc]), 3)
    fp = (self)._frame_params(fparam, nf, dev)
    ap = (self)._atom_params(aparam, nf, nloc, dev)
    aes = annotate(List[Tensor], [])
    fs = annotate(List[Tensor], [])
    vs = annotate(List[Tensor], [])
    avs = annotate(List[Tensor], [])
    for i in range(nf):
      c = torch.select(xyz, 0, i)
      t = torch.select(types, 0, i)
      if torch.__isnot__(box, None):
        box0 = unchecked_cast(Tensor, box)
        cell = torch.select(torch.reshape(torch.to(box0, 7), [nf, 3, 3]), 0, i)
        ec, et, mp = (self)._extend(c, t, cell)
      else:
        ec, et, mp = c, t, torch.arange(nloc, dtype=3, layout=None, device=dev)
      nl = (self)._format_nlist(ec, et, (self)._neighbours(ec, et, nloc))
      ae, ef, ev = (self)._lower(ec, et, nl, mp, torch.select(fp, 0, i), torch.select(ap, 0, i), do_atomic_virial)
      z3 = torch.zeros([nloc, 3], dtype=7, layout=None, device=dev)
      z9 = torch.zeros([nloc, 9], dtype=7, layout=None, device=dev)
      mpl = torch.to(mp, 4)
      _0 = torch.append(aes, ae)
      _1 = torch.append(fs, torch.index_add(z3, 0, mpl, ef))
      _2 = torch.append(vs, torch.sum(ev, [0], False, dtype=7))
      _3 = torch.append(avs, torch.index_add(z9, 0, mpl, ev))
    out = annotate(Dict[str, Tensor], {})
    atom_energy = torch.reshape(torch.stack(aes, 0), [nf, nloc, 1])
    torch._set_item(out, "atom_energy", atom_energy)
    torch._set_item(out, "energy", torch.sum(atom_energy, [1], False, dtype=7))
    torch._set_item(out, "force", torch.reshape(torch.stack(fs, 0), [nf, nloc, 3]))
    torch._set_item(out, "virial", torch.reshape(torch.stack(vs, 0), [nf, 9]))
    if do_atomic_virial:
      torch._set_item(out, "atom_virial", torch.reshape(torch.stack(avs, 0), [nf, nloc, 9]))
    else:
      pass
    torch._set_item(out, "mask", (self)._mask(types))
    return out
  def forward_lower(self: __torch__.dpc.Model,
    extended_coord: Tensor,
    extended_atype: Tensor,
    nlist: Tensor,
    mapping: Optional[Tensor]=None,
    fparam: Optional[Tensor]=None,
    aparam: Optional[Tensor]=None,
    do_atomic_virial: bool=False,
    comm_dict: Optional[Dict[str, Tensor]]=None,
    charge_spin: Optional[Tensor]=None) -> Dict[str, Tensor]:
    ret = (self).forward_common_lower(extended_coord, extended_atype, nlist, mapping, fparam, aparam, do_atomic_virial, comm_dict, False, None, charge_spin)
    out = annotate(Dict[str, Tensor], {})
    torch._set_item(out, "atom_energy", ret["energy"])
    torch._set_item(out, "energy", ret["energy_redu"])
    torch._set_item(out, "extended_force", torch.squeeze(ret["energy_derv_r"], -2))
    torch._set_item(out, "virial", torch.squeeze(ret["energy_derv_c_redu"], -2))
    if do_atomic_virial:
      torch._set_item(out, "extended_virial", torch.squeeze(ret["energy_derv_c"], -2))
    else:
      pass
    torch._set_item(out, "mask", ret["mask"])
    return out
  def forward_common_lower(self: __torch__.dpc.Model,
    extended_coord: Tensor,
    extended_atype: Tensor,
    nlist: Tensor,
    mapping: Optional[Tensor]=None,
    fparam: Optional[Tensor]=None,
    aparam: Optional[Tensor]=None,
    do_atomic_virial: bool=False,
    comm_dict: Optional[Dict[str, Tensor]]=None,
    extra_nlist_sort: bool=False,
    extended_coord_corr: Optional[Tensor]=None,
    charge_spin: Optional[Tensor]=None) -> Dict[str, Tensor]:
    nf = (torch.size(nlist))[0]
    nloc = (torch.size(nlist))[1]
    nall = (torch.size(extended_atype))[-1]
    dev = ops.prim.device(extended_coord)
    xyz = torch.to(torch.reshape(extended_coord, [nf, nall, 3]), 7)
    types = torch.to(torch.reshape(extended_atype, [nf, nall]), 3)
    if torch.__isnot__(mapping, None):
      mapping0 = unchecked_cast(Tensor, mapping)
      maps = torch.to(torch.reshape(mapping0, [nf, nall]), 3)
      if {{NEEDS_MAPPING}}:
        if bool(torch.any(torch.logical_or(torch.lt(maps, 0), torch.ge(maps, nloc)))):
          ops.prim.RaiseException("forward_lower: the mapping from extended to local atoms has entries outside [0, nloc) (DeePMD-kit 3.2's C++ DeepPotPT passes a freed buffer as the mapping on the CPU; this model needs a valid one)", "builtins.RuntimeError")
        else:
          pass
      else:
        pass
    else:
      if {{NEEDS_MAPPING}}:
        ops.prim.RaiseException("this model passes messages between atoms: forward_lower needs the mapping from extended to local atoms", "builtins.RuntimeError")
      else:
        pass
      maps = torch.zeros([nf, nall], dtype=3, layout=None, device=dev)
    fp = (self)._frame_params(fparam, nf, dev)
    ap = (self)._atom_params(aparam, nf, nloc, dev)
    aes = annotate(List[Tensor], [])
    fs = annotate(List[Tensor], [])
    vs = annotate(List[Tensor], [])
    for i in range(nf):
      ec = torch.select(xyz, 0, i)
      et = torch.select(types, 0, i)
      nl = (self)._format_nlist(ec, et, torch.to(torch.select(nlist, 0, i), 4))
      ae, ef, ev = (self)._lower(ec, et, nl, torch.select(maps, 0, i), torch.select(fp, 0, i), torch.select(ap, 0, i), do_atomic_virial)
      _0 = torch.append(aes, ae)
      _1 = torch.append(fs, ef)
      _2 = torch.append(vs, ev)
    out = annotate(Dict[str, Tensor], {})
    atom_energy = torch.reshape(torch.stack(aes, 0), [nf, nloc, 1])
    ext_virial = torch.reshape(torch.stack(vs, 0), [nf, nall, 1, 9])
    torch._set_item(out, "energy", atom_energy)
    torch._set_item(out, "energy_redu", torch.sum(atom_energy, [1], False, dtype=7))
    torch._set_item(out, "energy_derv_r", torch.reshape(torch.stack(fs, 0), [nf, nall, 1, 3]))
    torch._set_item(out, "energy_derv_c", ext_virial)
    torch._set_item(out, "energy_derv_c_redu", torch.sum(ext_virial, [1], False, dtype=7))
    torch._set_item(out, "mask", (self)._mask(torch.slice(types, 1, None, nloc)))
    return out
  def _lower(self: __torch__.dpc.Model,
    coord: Tensor,
    atype: Tensor,
    nlist: Tensor,
    mapping: Tensor,
    fparam: Tensor,
    aparam: Tensor,
    do_atomic_virial: bool) -> Tuple[Tensor, Tensor, Tensor]:
    nloc = (torch.size(nlist))[0]
    fp = torch.tile(torch.unsqueeze(fparam, 0), [nloc, 1])
    if do_atomic_virial:
      _0 = (self)._graph_atomic_virial(coord, atype, nlist, mapping, fp, aparam)
    else:
      _0 = (self)._graph(coord, atype, nlist, mapping, fp, aparam)
    return _0
  def _frame_params(self: __torch__.dpc.Model,
    fparam: Optional[Tensor],
    nf: int,
    dev: Device) -> Tensor:
    if torch.__isnot__(fparam, None):
      fparam0 = unchecked_cast(Tensor, fparam)
      _0 = torch.reshape(torch.to(fparam0, 7), [nf, {{DIM_FPARAM}}])
    else:
      {{FPARAM_DEFAULT}}
    return _0
  def _atom_params(self: __torch__.dpc.Model,
    aparam: Optional[Tensor],
    nf: int,
    nloc: int,
    dev: Device) -> Tensor:
    if torch.__isnot__(aparam, None):
      aparam0 = unchecked_cast(Tensor, aparam)
      _0 = torch.reshape(torch.to(aparam0, 7), [nf, nloc, {{DIM_APARAM}}])
    else:
      {{APARAM_DEFAULT}}
    return _0
  def _mask(self: __torch__.dpc.Model,
    types: Tensor) -> Tensor:
    keep = torch.ge(types, 0)
    for e in {{ATOM_EXCLUDE}}:
      keep = torch.logical_and(keep, torch.ne(types, e))
    return torch.to(keep, 3)
  def _extend(self: __torch__.dpc.Model,
    coord: Tensor,
    atype: Tensor,
    cell: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    dev = ops.prim.device(coord)
    nloc = (torch.size(coord))[0]
    rec, _0 = torch.linalg_inv_ex(cell)
    frac = torch.remainder(torch.matmul(coord, rec), 1.)
    wrapped = torch.matmul(frac, cell)
    a0 = torch.select(cell, 0, 0)
    a1 = torch.select(cell, 0, 1)
    a2 = torch.select(cell, 0, 2)
    volume = torch.abs(torch.linalg_det(cell))
    h0 = torch.div(volume, torch.linalg_norm(torch.cross(a1, a2, -1), None, [-1]))
    h1 = torch.div(volume, torch.linalg_norm(torch.cross(a2, a0, -1), None, [-1]))
    h2 = torch.div(volume, torch.linalg_norm(torch.cross(a0, a1, -1), None, [-1]))
    faces = torch.stack([h0, h1, h2], 0)
    nbuff = torch.cpu(torch.to(torch.ceil(torch.mul(torch.reciprocal(faces), {{RCUT}})), 4))
    n0 = int(torch.item(torch.select(nbuff, 0, 0)))
    n1 = int(torch.item(torch.select(nbuff, 0, 1)))
    n2 = int(torch.item(torch.select(nbuff, 0, 2)))
    cpu = torch.device("cpu")
    xi = torch.arange(torch.neg(n0), torch.add(n0, 1), 1, dtype=4, layout=None, device=cpu)
    yi = torch.arange(torch.neg(n1), torch.add(n1, 1), 1, dtype=4, layout=None, device=cpu)
    zi = torch.arange(torch.neg(n2), torch.add(n2, 1), 1, dtype=4, layout=None, device=cpu)
    eye = torch.eye(3, dtype=7, layout=None, device=cpu)
    grid = torch.mul(torch.view(xi, [-1, 1, 1, 1]), torch.select(eye, 0, 0))
    grid = torch.add(grid, torch.mul(torch.view(yi, [1, -1, 1, 1]), torch.select(eye, 0, 1)))
    grid = torch.add(grid, torch.mul(torch.view(zi, [1, 1, -1, 1]), torch.select(eye, 0, 2)))
    grid = torch.to(torch.view(grid, [-1, 3]), dev)
    order = torch.argsort(torch.linalg_norm(grid, None, [-1]))
    shifts = torch.index(grid, annotate(List[Optional[Tensor]], [order]))
    ns = (torch.size(shifts))[0]
    shift_vec = torch.einsum("sd,dk->sk", [shifts, cell])
    ext = torch.add(torch.unsqueeze(wrapped, 0), torch.unsqueeze(shift_vec, 1))
    ext_coord = torch.reshape(ext, [torch.mul(ns, nloc), 3])
    ext_type = torch.reshape(torch.tile(torch.unsqueeze(atype, 0), [ns, 1]), [-1])
    idx = torch.arange(nloc, dtype=3, layout=None, device=dev)
    mapping = torch.reshape(torch.tile(torch.unsqueeze(idx, 0), [ns, 1]), [-1])
    return (ext_coord, ext_type, mapping)
  def _neighbours(self: __torch__.dpc.Model,
    coord: Tensor,
    atype: Tensor,
    nloc: int) -> Tensor:
    dev = ops.prim.device(coord)
    nall = (torch.size(coord))[0]
    if torch.gt(torch.numel(coord), 0):
      xmax = torch.add(torch.max(coord), {{TWO_RCUT}})
    else:
      xmax = torch.add(torch.zeros([1], dtype=7, layout=None, device=dev), {{TWO_RCUT}})
    virtual = torch.lt(atype, 0)
    vc = torch.where(torch.unsqueeze(virtual, 1), xmax, coord)
    diff = torch.sub(torch.unsqueeze(vc, 0), torch.unsqueeze(torch.slice(vc, 0, None, nloc), 1))
    rr = torch.linalg_norm(diff, None, [-1])
    rr = torch.sub(rr, torch.eye(nloc, nall, dtype=7, layout=None, device=dev))
    top_k = ops.prim.min(torch.add({{NSEL}}, 1), nall)
    rr0, nl = torch.topk(rr, top_k, -1, False)
    rr1 = torch.slice(rr0, 1, 1)
    nl1 = torch.slice(nl, 1, 1)
    nnei = (torch.size(rr1))[1]
    if torch.lt(nnei, {{NSEL}}):
      pad = torch.ones([nloc, torch.sub({{NSEL}}, nnei)], dtype=7, layout=None, device=dev)
      rr2 = torch.cat([rr1, torch.add(pad, {{RCUT}})], -1)
      nl2 = torch.cat([nl1, torch.ones([nloc, torch.sub({{NSEL}}, nnei)], dtype=4, layout=None, device=dev)], -1)
    else:
      rr2 = torch.slice(rr1, 1, None, {{NSEL}})
      nl2 = torch.slice(nl1, 1, None, {{NSEL}})
    drop = torch.logical_or(torch.gt(rr2, {{RCUT}}), torch.unsqueeze(torch.slice(virtual, 0, None, nloc), 1))
    return torch.masked_fill(nl2, drop, -1)
  def _format_nlist(self: __torch__.dpc.Model,
    coord: Tensor,
    atype: Tensor,
    nlist: Tensor) -> Tensor:
    dev = ops.prim.device(coord)
    nloc = (torch.size(nlist))[0]
    n = (torch.size(nlist))[1]
    if torch.lt(n, {{NNEI}}):
      pad = torch.full([nloc, torch.sub({{NNEI}}, n)], -1, dtype=4, layout=None, device=dev)
      nl0 = torch.cat([nlist, pad], -1)
    else:
      nl0 = nlist
    # Neighbours beyond rcut are dropped (an MD code's list reaches rcut + skin); a list
    # longer than sum(sel) keeps the nearest.
    none = torch.lt(nl0, 0)
    safe = torch.masked_fill(nl0, none, 0)
    width = (torch.size(nl0))[1]
    nb = torch.reshape(torch.index_select(coord, 0, torch.reshape(safe, [-1])), [nloc, width, 3])
    centres = torch.unsqueeze(torch.slice(coord, 0, None, nloc), 1)
    rr = torch.masked_fill(torch.linalg_norm(torch.sub(nb, centres), None, [-1]), none, float("inf"))
    if torch.gt(width, {{NNEI}}):
      rr0, order = torch.sort(rr, -1)
      rr1 = torch.slice(rr0, 1, None, {{NNEI}})
      nl1 = torch.slice(torch.gather(nl0, 1, order), 1, None, {{NNEI}})
    else:
      rr1, nl1 = rr, nl0
    nl = torch.masked_fill(nl1, torch.gt(rr1, {{RCUT}}), -1)
    if {{DISTINGUISH_TYPES}}:
      none = torch.lt(nl, 0)
      tn = torch.index_select(atype, 0, torch.reshape(torch.masked_fill(nl, none, 0), [-1]))
      tn = torch.masked_fill(torch.reshape(tn, [nloc, {{NNEI}}]), none, -1)
      blocks = annotate(List[Tensor], [])
      sel = {{SEL}}
      for ii in range(torch.len(sel)):
        pick = torch.to(torch.eq(tn, ii), 3)
        pick0, imap = torch.sort(pick, stable=True, dim=-1, descending=True)
        inl = torch.gather(nl, 1, imap)
        inl = torch.masked_fill(inl, torch.bitwise_not(torch.to(pick0, 11)), -1)
        _0 = torch.append(blocks, torch.slice(inl, -1, None, sel[ii]))
      nl = torch.cat(blocks, -1)
    else:
      pass
    return torch.to(nl, 3)
  def get_rcut(self: __torch__.dpc.Model) -> float:
    return {{RCUT}}
  def get_type_map(self: __torch__.dpc.Model) -> List[str]:
    return {{TYPE_MAP}}
  def get_ntypes(self: __torch__.dpc.Model) -> int:
    return {{NTYPES}}
  def get_sel(self: __torch__.dpc.Model) -> List[int]:
    return {{SEL}}
  def get_nsel(self: __torch__.dpc.Model) -> int:
    return {{NNEI}}
  def get_nnei(self: __torch__.dpc.Model) -> int:
    return {{NNEI}}
  def get_dim_fparam(self: __torch__.dpc.Model) -> int:
    return {{DIM_FPARAM}}
  def get_dim_aparam(self: __torch__.dpc.Model) -> int:
    return {{DIM_APARAM}}
  def has_default_fparam(self: __torch__.dpc.Model) -> bool:
    return {{HAS_DEFAULT_FPARAM}}
  def get_default_fparam(self: __torch__.dpc.Model) -> Optional[Tensor]:
    {{GET_DEFAULT_FPARAM}}
  def is_aparam_nall(self: __torch__.dpc.Model) -> bool:
    return False
  def mixed_types(self: __torch__.dpc.Model) -> bool:
    return {{MIXED_TYPES}}
  def has_message_passing(self: __torch__.dpc.Model) -> bool:
    return {{NEEDS_MAPPING}}
  def need_sorted_nlist_for_lower(self: __torch__.dpc.Model) -> bool:
    return False
  def get_min_nbor_dist(self: __torch__.dpc.Model) -> Optional[float]:
    return {{MIN_NBOR_DIST}}
  def get_model_def_script(self: __torch__.dpc.Model) -> str:
    return self.model_def_script
  def model_output_type(self: __torch__.dpc.Model) -> List[str]:
    return ["energy"]
  def get_sel_type(self: __torch__.dpc.Model) -> List[int]:
    return annotate(List[int], [])
  def has_chg_spin_ebd(self: __torch__.dpc.Model) -> bool:
    return False
  def has_default_chg_spin(self: __torch__.dpc.Model) -> bool:
    return False
  def get_dim_chg_spin(self: __torch__.dpc.Model) -> int:
    return 0
