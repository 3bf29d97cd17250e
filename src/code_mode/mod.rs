//! Code mode: the model writes one JavaScript program that calls the tools, and the gateway runs
//! it in a sandbox under strict budgets.
//!
//! The pieces, in the order a turn uses them: [`policy`] picks the tools a program may see,
//! [`declarations`] describes them as a typed API, [`extract`] finds a program in a text reply,
//! [`sandbox`] runs it in QuickJS with every tool call passing through the [`bridge`], and
//! [`circuit`] demotes code mode to shadow runs while tools keep timing out.

pub mod bridge;
pub mod circuit;
pub mod declarations;
pub mod extract;
pub mod policy;
pub mod sandbox;
