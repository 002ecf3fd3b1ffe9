//! [`MemoryOccupancy`]: one node is the whole cluster, so every local transition is a
//! cluster transition and the hub's counts are the cluster's.

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::ChannelName;

use super::{Occupancy, OccupancyError, OccupancyHandler};

/// Occupancy for a single node.
#[derive(Debug, Default)]
pub struct MemoryOccupancy;

#[async_trait]
impl Occupancy for MemoryOccupancy {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn start(&self, _handler: Arc<dyn OccupancyHandler>) -> Result<(), OccupancyError> {
        Ok(())
    }

    async fn occupy(&self, _: &str, _: &ChannelName) -> Result<bool, OccupancyError> {
        Ok(true)
    }

    async fn vacate(&self, _: &str, _: &ChannelName) -> Result<bool, OccupancyError> {
        Ok(true)
    }

    fn local_count(&self, _: &str, _: &ChannelName, _: usize) {}

    async fn subscriber_count(
        &self,
        _: &str,
        _: &ChannelName,
    ) -> Result<Option<usize>, OccupancyError> {
        Ok(None)
    }

    async fn channels(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<Vec<(ChannelName, usize)>>, OccupancyError> {
        Ok(None)
    }
}
