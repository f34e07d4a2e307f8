//! Data curation: what `kiln data inspect`, `clean` and `split` find and fix.

pub mod suspicious;
