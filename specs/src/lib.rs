//! swarm-specs: the object model and the stack-file front end.
//!
//! A tour, in pipeline order:
//! - [`yaml`] parses text into nodes that remember their line and column (anchors and `<<` merges applied);
//! - [`interpolate`] expands `${VAR}` in values, as the Compose specification says;
//! - [`shape`] checks the tree against the JSON Schema generated from [`compose`] (the file format) and types it;
//! - [`loader`] runs the whole front end, merging several `-f` files with Compose's override rules;
//! - [`normalize`] turns the file into the canonical [`spec::StackSpec`] (defaults, names, units, references);
//! - [`age`] decrypts secret and config files kept encrypted in git;
//! - [`diag`] is how every problem is reported: file, line, column, field, message and a hint.
//!
//! No network, no async: everything here is a pure function of its input (and of the files it is told to read).

pub mod age;
pub mod compose;
pub mod diag;
pub mod interpolate;
pub mod loader;
pub mod normalize;
pub mod schema;
pub mod shape;
pub mod spec;
pub mod task;
pub mod units;
pub mod yaml;

pub use diag::Diagnostic;
pub use diag::Diagnostics;
pub use loader::load;
pub use loader::LoadOptions;
pub use loader::Loaded;
pub use spec::StackSpec;
