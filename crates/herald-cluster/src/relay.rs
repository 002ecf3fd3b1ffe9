//! What the brokers that pair their own fan-out with Redis history share: decoding the frames
//! they carry, skipping what a catch-up already delivered, and the catch-up itself.
//!
//! Frames: `P{offset},{epoch},{json}` for a publication (offset and epoch empty without
//! history) and `C{json}` for a control message (see [`crate::envelope`]).

use std::collections::HashSet;
use std::sync::Arc;

use herald_core::broker::BrokerHandler;
use herald_core::publication::{Position, Publication};
use herald_protocol::ChannelName;
use tracing::{debug, info, warn};

use crate::envelope;
use crate::redis::StreamLog;

/// How many publications a channel may catch up after a reconnect.
pub(crate) const MAX_CATCH_UP: usize = 1000;

/// The frame of a publication: its position (if any) in front of its encoding.
pub(crate) fn publication_frame(position: Option<(u64, &str)>, body: &[u8]) -> Vec<u8> {
    let mut frame = match position {
        Some((offset, epoch)) => format!("P{offset},{epoch},").into_bytes(),
        None => b"P,,".to_vec(),
    };
    frame.extend_from_slice(body);
    frame
}

/// The frame of a control message.
pub(crate) fn control_frame(control: &herald_core::broker::Control) -> Vec<u8> {
    let mut frame = vec![b'C'];
    frame.extend_from_slice(&envelope::encode_control(control));
    frame
}

/// What one channel has had delivered on this node, to catch up and to skip repeats.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// The stream and highest offset delivered.
    pub(crate) top: Option<(Arc<str>, u64)>,
    /// Offsets delivered by the last catch-up: the same publications may still arrive live.
    caught: HashSet<u64>,
}

impl Delivered {
    /// Whether to deliver a publication at `offset` of `epoch` (recording it), with the
    /// epoch to give it.
    pub(crate) fn admit(&mut self, offset: u64, epoch: &str) -> Option<Arc<str>> {
        if self.caught.remove(&offset) {
            return None;
        }
        let epoch = match &self.top {
            Some((e, _)) if &**e == epoch => e.clone(),
            _ => Arc::from(epoch),
        };
        let top = self.top.as_ref().map_or(0, |(_, o)| *o);
        self.top = Some((epoch.clone(), top.max(offset)));
        Some(epoch)
    }
}

/// Decode a publication frame (after admitting its offset); `None` when it is a repeat or
/// malformed.
pub(crate) fn decode(delivered: &mut Delivered, frame: &[u8]) -> Option<Publication> {
    let Some((b'P', rest)) = frame.split_first() else {
        debug!("ignored a foreign message");
        return None;
    };
    let Some((offset, epoch, body)) = crate::redis::split_frame(rest) else {
        warn!("dropped a malformed publication");
        return None;
    };
    let position = match offset {
        Some(offset) => Some(Position {
            offset,
            epoch: delivered.admit(offset, epoch)?,
        }),
        None => None,
    };
    match envelope::decode_publication(body, position) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "dropped an undecodable publication");
            None
        }
    }
}

/// Decode and hand a publication frame to the node.
pub(crate) fn deliver(handler: &Arc<dyn BrokerHandler>, delivered: &mut Delivered, frame: &[u8]) {
    if let Some(p) = decode(delivered, frame) {
        handler.handle_publication(Arc::new(p));
    }
}

/// Hand a control frame to the node.
pub(crate) fn deliver_control(handler: &Arc<dyn BrokerHandler>, frame: &[u8]) {
    match frame.split_first() {
        Some((b'C', body)) => match envelope::decode_control(body) {
            Ok(c) => handler.handle_control(c),
            Err(e) => warn!(error = %e, "dropped an undecodable control message"),
        },
        _ => debug!("ignored a foreign control message"),
    }
}

/// After a reconnect: deliver what `channel` missed, from its history stream, after the
/// last offset delivered. Nothing to do for channels without history or a lost stream.
pub(crate) async fn catch_up(
    log: &StreamLog,
    handler: &Arc<dyn BrokerHandler>,
    app_id: &str,
    channel: &ChannelName,
    delivered: &mut Delivered,
) {
    let Some((epoch, top)) = delivered.top.clone() else {
        return;
    };
    match log.after(app_id, channel.as_str(), top, MAX_CATCH_UP).await {
        Ok((stream_epoch, entries)) if *stream_epoch == *epoch => {
            let n = entries.len();
            for (offset, body) in entries {
                deliver(
                    handler,
                    delivered,
                    &publication_frame(Some((offset, &stream_epoch)), &body),
                );
                delivered.caught.insert(offset);
            }
            if n > 0 {
                info!(channel = %channel, publications = n, "caught up after a reconnect");
            }
        }
        Ok(_) => debug!(channel = %channel, "history stream lost; nothing to catch up"),
        Err(e) => warn!(error = %e, channel = %channel, "catch-up read failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_repeats_are_skipped_once() {
        let mut d = Delivered::default();
        assert!(d.admit(1, "e").is_some());
        d.caught.insert(2);
        assert!(
            d.admit(2, "e").is_none(),
            "delivered by the catch-up already"
        );
        assert!(d.admit(3, "e").is_some());
        assert_eq!(d.top.as_ref().map(|(_, o)| *o), Some(3));
    }

    #[test]
    fn frames_carry_the_position_in_front() {
        assert_eq!(publication_frame(Some((3, "ab")), b"{}"), b"P3,ab,{}");
        assert_eq!(publication_frame(None, b"{}"), b"P,,{}");
    }
}
