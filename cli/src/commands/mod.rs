pub mod bench;
pub mod compile;
pub mod convert;
pub mod eval;
pub mod info;
pub mod test;
