//! Benchmarks only: see `eval.rs` and `compare_deepmd.py`.
