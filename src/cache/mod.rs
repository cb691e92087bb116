//! The binary cache: store paths shared between machines through object
//! storage, as zstd archives of their NAR serialisation beside small signed
//! records (see [`record`]).

pub mod record;
