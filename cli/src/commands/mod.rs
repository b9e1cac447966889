pub mod compile;
pub mod eval;
pub mod info;
pub mod test;
