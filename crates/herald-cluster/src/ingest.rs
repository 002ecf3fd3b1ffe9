//! Laravel Redis ingest (placeholder until the next increment).
