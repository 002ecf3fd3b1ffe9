//! The scenarios. Each returns a JSON result; every one reports messages expected and
//! received, so loss is never hidden.

pub mod churn;
pub mod fanout;
pub mod idle;
pub mod publish_api;
pub mod restart;
pub mod soak;
pub mod throughput;
