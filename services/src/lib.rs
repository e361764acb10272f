//! # meeting-system
//!
//! The messaging of a video-meeting platform's five services (user, meeting, media,
//! signaling, ai) on Courier:
//!
//! - **tasks** go through one Courier queue per service (`svc.<service>`), with the
//!   service's priority, routed by kind through the [`courier::Dispatcher`];
//! - **domain events** go through the event bus, one consumer group per service, so a
//!   service that was down gets what it missed;
//! - **WebRTC relay** between participants goes through pub/sub (`signal.<meeting>.<user>`,
//!   live, at most once);
//! - each service's **internal components** talk over their own in-process `memory://` bus.
//!
//! [`topology`] is the table of who owns, emits and listens to what; [`runtime::Platform`]
//! starts services; [`scenario`] plays the end-to-end scenario and checks it against an
//! explicit expectation table using the delivery [`ledger`]; [`telemetry`] serves metrics,
//! exports traces and renders the demo's trace.
#![forbid(unsafe_code)]

pub mod config;
pub mod dsp;
pub mod ledger;
mod protocol;
pub mod runtime;
pub mod scenario;
mod services;
pub mod telemetry;
pub mod topology;

pub use config::{DEFAULT_BACKEND_URL, Settings};
pub use ledger::Ledger;
pub use runtime::{Platform, RunningService};
pub use topology::{Names, ServiceKind};
