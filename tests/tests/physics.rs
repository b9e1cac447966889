//! Properties no fixture gives: forces and virials are derivatives of the energy, and the
//! energy is invariant under translation, rotation and permutation of like atoms.

mod common;

use dpc_runtime::{DeepPot, Frame, Output};

fn load(name: &str) -> DeepPot {
    DeepPot::load(&common::model_file(name, "model.dp")).unwrap()
}

fn eval(pot: &DeepPot, coord: &[f64], atype: &[i32], cell: Option<&[f64]>) -> Output {
    pot.compute(&Frame::new(coord, atype, cell), true).unwrap()
}

/// A configuration per model: periodic triclinic and the non-periodic cluster.
fn configs(name: &str) -> Vec<common::RefConfig> {
    common::reference(name)
        .into_iter()
        .filter(|c| c.name == "pbc_48_triclinic" || c.name == "nopbc_cluster")
        .collect()
}

#[test]
fn forces_are_minus_the_energy_gradient() {
    let h = 1e-5;
    for name in common::MODELS {
        let pot = load(name);
        for c in configs(name) {
            let out = eval(&pot, &c.coord, &c.atype, c.cell.as_deref());
            // A handful of coordinates spread over the system.
            for k in (0..c.coord.len()).step_by(7).take(6) {
                let mut plus = c.coord.clone();
                plus[k] += h;
                let mut minus = c.coord.clone();
                minus[k] -= h;
                let ep = eval(&pot, &plus, &c.atype, c.cell.as_deref()).energy;
                let em = eval(&pot, &minus, &c.atype, c.cell.as_deref()).energy;
                let fd = -(ep - em) / (2.0 * h);
                let err = (fd - out.force[k]).abs();
                assert!(
                    err < 1e-6 * (1.0 + fd.abs()),
                    "{name} {} coord {k}: force {} vs finite difference {fd}",
                    c.name,
                    out.force[k]
                );
            }
        }
    }
}

/// `virial[b][c] = -dE/d eps[c][b]` under the homogeneous strain `x -> x (I + eps)` of atoms
/// and cell together.
#[test]
fn virial_is_minus_the_strain_derivative() {
    let h = 1e-6;
    for name in common::MODELS {
        let pot = load(name);
        let c = common::reference(name)
            .into_iter()
            .find(|c| c.name == "pbc_48_triclinic")
            .unwrap();
        let cell = c.cell.clone().unwrap();
        let out = eval(&pot, &c.coord, &c.atype, Some(&cell));
        let strain = |cc: usize, b: usize, s: f64| -> (Vec<f64>, Vec<f64>) {
            let deform = |v: &[f64]| -> Vec<f64> {
                let mut w = v.to_vec();
                for row in 0..v.len() / 3 {
                    w[3 * row + b] += s * v[3 * row + cc];
                }
                w
            };
            (deform(&c.coord), deform(&cell))
        };
        for cc in 0..3 {
            for b in 0..3 {
                let (xp, hp) = strain(cc, b, h);
                let (xm, hm) = strain(cc, b, -h);
                let ep = eval(&pot, &xp, &c.atype, Some(&hp)).energy;
                let em = eval(&pot, &xm, &c.atype, Some(&hm)).energy;
                let fd = -(ep - em) / (2.0 * h);
                let got = out.virial[b * 3 + cc];
                assert!(
                    (fd - got).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{name} virial[{b}][{cc}] = {got}, strain derivative {fd}"
                );
            }
        }
        // The per-atom virials sum to the virial.
        let av = out.atom_virial.unwrap();
        for d in 0..9 {
            let s: f64 = (0..c.atype.len()).map(|i| av[9 * i + d]).sum();
            assert!(
                (s - out.virial[d]).abs() < 1e-10,
                "{name}: atom virials do not sum to the virial"
            );
        }
    }
}

/// Rotation about an arbitrary axis (Rodrigues), as a row-major 3x3 matrix acting on columns.
fn rotation(axis: [f64; 3], angle: f64) -> [[f64; 3]; 3] {
    let n = (axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2]).sqrt();
    let (x, y, z) = (axis[0] / n, axis[1] / n, axis[2] / n);
    let (s, c) = angle.sin_cos();
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]
}

fn rotate(q: &[[f64; 3]; 3], v: &[f64]) -> Vec<f64> {
    v.chunks(3)
        .flat_map(|p| (0..3).map(move |i| q[i][0] * p[0] + q[i][1] * p[1] + q[i][2] * p[2]))
        .collect()
}

#[test]
fn energy_is_invariant_and_forces_rotate_with_the_frame() {
    let q = rotation([0.3, -0.5, 0.8], 0.7);
    for name in common::MODELS {
        let pot = load(name);
        for c in configs(name) {
            let base = eval(&pot, &c.coord, &c.atype, c.cell.as_deref());
            let tol = 1e-10 * (1.0 + base.energy.abs());
            // Translation.
            let shifted: Vec<f64> = c
                .coord
                .iter()
                .enumerate()
                .map(|(i, x)| x + [1.7, -2.3, 0.9][i % 3])
                .collect();
            let t = eval(&pot, &shifted, &c.atype, c.cell.as_deref());
            assert!(
                (t.energy - base.energy).abs() < tol,
                "{name} {}: translation changed the energy",
                c.name
            );
            // Rotation of atoms (and cell).
            let coord_r = rotate(&q, &c.coord);
            let cell_r = c.cell.as_ref().map(|h| rotate(&q, h));
            let r = eval(&pot, &coord_r, &c.atype, cell_r.as_deref());
            assert!(
                (r.energy - base.energy).abs() < tol,
                "{name} {}: rotation changed the energy",
                c.name
            );
            let f_rot = rotate(&q, &base.force);
            for (a, b) in r.force.iter().zip(&f_rot) {
                assert!(
                    (a - b).abs() < 1e-9,
                    "{name} {}: forces do not rotate with the frame",
                    c.name
                );
            }
            // Permutation of two atoms of one type.
            let t0 = c.atype[0];
            let j = (1..c.atype.len())
                .rev()
                .find(|&j| c.atype[j] == t0)
                .unwrap();
            let mut coord_p = c.coord.clone();
            for d in 0..3 {
                coord_p.swap(d, 3 * j + d);
            }
            let p = eval(&pot, &coord_p, &c.atype, c.cell.as_deref());
            assert!(
                (p.energy - base.energy).abs() < tol,
                "{name} {}: permuting like atoms changed the energy",
                c.name
            );
            for d in 0..3 {
                assert!((p.force[d] - base.force[3 * j + d]).abs() < 1e-9);
                assert!((p.force[3 * j + d] - base.force[d]).abs() < 1e-9);
            }
        }
    }
}
