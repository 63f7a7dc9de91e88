//! afm-data: turns multi-agent logs into packed, masked training shards.
//!
//! The shard format ([`shards`]) is the contract with `afm-train`.

pub mod shards;
