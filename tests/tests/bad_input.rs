//! Bad input gives a clear error, never a panic: corrupt and truncated files, models dpc
//! does not support, and unusable configurations.

mod common;

use std::path::Path;

use dpc_formats::{read_model_bytes, Format, Value};
use dpc_runtime::{DeepPot, EvalError, Frame};

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(common::fixtures().join(rel)).unwrap()
}

/// Reading (and, when that succeeds, compiling) must return, whatever the bytes are.
fn must_not_panic(format: Format, bytes: Vec<u8>) -> bool {
    let r =
        std::panic::catch_unwind(
            || match read_model_bytes(format, bytes, Path::new("mangled")) {
                Ok(tree) => DeepPot::from_tree(tree).is_ok(),
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    false
                }
            },
        );
    r.expect("reading a mangled model panicked")
}

#[test]
fn truncated_dp_files_are_errors() {
    let bytes = fixture_bytes("models/se_e2_a/model.dp");
    for frac in [0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 0.999] {
        let cut = (bytes.len() as f64 * frac) as usize;
        let ok = must_not_panic(Format::Dp, bytes[..cut].to_vec());
        assert!(!ok, "a .dp truncated to {cut} bytes loaded");
    }
}

#[test]
fn corrupted_dp_files_never_panic() {
    let bytes = fixture_bytes("models/se_e2_a_tos/model.dp");
    let mut state = 0x2545F4914F6CDD1Du64;
    for _ in 0..200 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % b.len() as u64) as usize;
            b[i] ^= (state >> 32) as u8 | 1;
        }
        must_not_panic(Format::Dp, b);
    }
}

#[test]
fn truncated_and_garbled_yaml_are_errors() {
    let bytes = fixture_bytes("models/se_e2_r/model.yaml");
    for frac in [0.0, 0.2, 0.5, 0.8, 0.99] {
        let cut = (bytes.len() as f64 * frac) as usize;
        assert!(
            !must_not_panic(Format::Yaml, bytes[..cut].to_vec()),
            "yaml truncated at {cut} loaded"
        );
    }
    assert!(!must_not_panic(
        Format::Yaml,
        b"\xff\xfe\x00garbage".to_vec()
    ));
    assert!(!must_not_panic(Format::Yaml, b"model: [1, 2\n".to_vec()));
    // A .dp file is not YAML and a YAML file is not HDF5.
    assert!(!must_not_panic(
        Format::Yaml,
        fixture_bytes("models/se_e2_r/model.dp")
    ));
    assert!(!must_not_panic(Format::Dp, bytes));
}

fn tree() -> Value {
    dpc_formats::read_model(&common::fixtures().join("models/se_e2_a/model.dp")).unwrap()
}

fn set(tree: &mut Value, path: &[&str], v: Value) {
    let mut cur = tree;
    for k in &path[..path.len() - 1] {
        cur = match cur {
            Value::Dict(d) => d.get_mut(*k).unwrap(),
            _ => panic!(),
        };
    }
    if let Value::Dict(d) = cur {
        d.insert(path[path.len() - 1].to_string(), v);
    }
}

fn load_err(t: Value) -> String {
    match DeepPot::from_tree(t) {
        Ok(_) => panic!("model loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_and_inconsistent_models_are_named() {
    // Unsupported kinds are named; supported ones with another descriptor's keys name the
    // key they lack.
    for (kind, word) in [
        ("dpa4", "dpa4"),
        ("se_a_mask", "se_a_mask"),
        ("my_descriptor", "unknown descriptor"),
        ("dpa2", "missing key `ntypes`"),
        ("dpa3", "missing key `ntypes`"),
        ("hybrid", "@version 2"),
    ] {
        let mut t = tree();
        set(
            &mut t,
            &["model", "descriptor", "type"],
            Value::Str(kind.into()),
        );
        let e = load_err(t);
        assert!(e.contains(word), "{e}");
    }
    let mut t = tree();
    set(
        &mut t,
        &["model", "fitting", "type"],
        Value::Str("dipole".into()),
    );
    assert!(load_err(t).contains("dipole"));
    let mut t = tree();
    set(&mut t, &["model", "descriptor", "@version"], Value::Int(99));
    assert!(load_err(t).contains("@version 99"));
    let mut t = tree();
    set(
        &mut t,
        &["model", "descriptor", "sel"],
        Value::List(vec![Value::Int(50)]),
    );
    assert!(load_err(t).contains("sel"));
    let mut t = tree();
    set(
        &mut t,
        &["model", "descriptor", "@variables", "davg"],
        Value::Null,
    );
    assert!(load_err(t).contains("davg"));
    let mut t = tree();
    set(&mut t, &["model", "type"], Value::Str("spin".into()));
    assert!(load_err(t).contains("spin"));
}

fn pot() -> DeepPot {
    DeepPot::from_tree(tree()).unwrap()
}

fn input_err(coord: &[f64], atype: &[i32], cell: Option<&[f64]>) -> String {
    match pot().compute(&Frame::new(coord, atype, cell), true) {
        Err(EvalError::Input(m)) => m,
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn unusable_configurations_are_input_errors() {
    let cube = [10.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 10.0];
    let two = [0.0, 0.0, 0.0, 1.5, 0.0, 0.0];
    assert!(input_err(&[], &[], Some(&cube)).contains("empty"));
    assert!(input_err(&two, &[0, 2], Some(&cube)).contains("type 2"));
    assert!(input_err(&[0.0, f64::NAN, 0.0, 1.5, 0.0, 0.0], &[0, 1], Some(&cube)).contains("NaN"));
    assert!(input_err(
        &two,
        &[0, 1],
        Some(&[1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    )
    .contains("singular"));
    assert!(input_err(&two, &[0, 1], Some(&[0.0; 9])).contains("singular"));
    assert!(input_err(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], &[0, 1], None).contains("overlap"));
    // Overlap with a periodic image of another atom.
    assert!(input_err(&[0.0, 0.0, 0.0, 10.0, 0.0, 0.0], &[0, 1], Some(&cube)).contains("overlap"));
    assert!(input_err(&two[..5], &[0, 1], None).contains("coordinates"));
    assert!(input_err(&two, &[0, 1], Some(&cube[..8])).contains("9"));
}

#[test]
fn virtual_atoms_are_ignored() {
    let p = pot();
    let c = common::reference("se_e2_a")
        .into_iter()
        .find(|c| c.name == "nopbc_cluster")
        .unwrap();
    let base = p
        .compute(
            &Frame {
                coord: &c.coord,
                atype: &c.atype,
                cell: None,
                fparam: None,
                aparam: None,
            },
            true,
        )
        .unwrap();
    let mut coord = c.coord.clone();
    coord.extend([0.1, 0.2, 0.3]); // on top of nothing in particular; virtual atoms take no part
    let mut atype = c.atype.clone();
    atype.push(-1);
    let with = p
        .compute(
            &Frame {
                coord: &coord,
                atype: &atype,
                cell: None,
                fparam: None,
                aparam: None,
            },
            true,
        )
        .unwrap();
    assert!((with.energy - base.energy).abs() < 1e-12);
    assert_eq!(with.force[3 * c.atype.len()..], [0.0; 3]);
    assert_eq!(with.atom_energy[c.atype.len()], 0.0);
}

/// A zip like a TorchScript archive whose `data.pkl` is `pickle`.
fn archive_with_pickle(pickle: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("model/data.pkl", opts).unwrap();
        z.write_all(pickle).unwrap();
        z.start_file("model/byteorder", opts).unwrap();
        z.write_all(b"little").unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn hostile_pickles_are_refused_not_run() {
    let marker = std::env::temp_dir().join(format!("dpc-pwned-{}", std::process::id()));
    let cmd = format!("touch {}", marker.display());
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
        ("torch", "load"),
    ] {
        // GLOBAL module.name; MARK; BINUNICODE cmd; TUPLE; REDUCE; STOP
        let mut p = b"\x80\x02".to_vec();
        p.extend(format!("c{module}\n{name}\n(").as_bytes());
        p.push(b'X');
        p.extend((cmd.len() as u32).to_le_bytes());
        p.extend(cmd.as_bytes());
        p.extend(b"tR.");
        let err = read_model_bytes(Format::Pth, archive_with_pickle(&p), Path::new("evil.pth"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refusing") && err.contains(&format!("{module}.{name}")),
            "{err}"
        );
    }
    assert!(!marker.exists(), "a pickle executed code");
}

#[test]
fn broken_pth_and_pte_files_are_errors() {
    for (format, rel) in [
        (Format::Pth, "models/se_e2_a/model.pth"),
        (Format::Pte, "models/se_e2_r/model.pte"),
    ] {
        let bytes = fixture_bytes(rel);
        assert!(!must_not_panic(format, vec![]), "{rel}: empty file loaded");
        for frac in [0.05, 0.5, 0.95, 0.9999] {
            let cut = (bytes.len() as f64 * frac) as usize;
            assert!(
                !must_not_panic(format, bytes[..cut].to_vec()),
                "{rel} truncated at {cut} loaded"
            );
        }
        let mut state = 0x9E3779B97F4A7C15u64;
        for _ in 0..100 {
            let mut b = bytes.clone();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % b.len() as u64) as usize;
            b[i] ^= 0x40;
            must_not_panic(format, b);
        }
    }
    // A zip that is not a TorchScript archive.
    let e = read_model_bytes(
        Format::Pth,
        archive_with_pickle(b"\x80\x02N.").into_iter().collect(),
        Path::new("x.pth"),
    );
    assert!(e.is_err());
}
