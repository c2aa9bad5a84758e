//! The per-connection control stream between two peers' data planes.
//!
//! Each side of a data-plane connection opens one unidirectional stream and writes
//! length-prefixed [`ControlMsg`] frames on it for the life of the connection: first a
//! [`ControlMsg::Hello`] (fleet, site label, origin flag), then a bitfield per release and HAVE
//! increments as chunks arrive (as BitTorrent does), and the gossip a peer missed. Availability so
//! travels only between connected peers; the fleet-wide gossip carries announcements and wave
//! control only.
//!
//! Frames: length (u32 LE, at most [`MAX_FRAME_BYTES`]) then the postcard encoding.

pub use crate::wire::{ControlMsg, MAX_FRAME_BYTES, encode};

/// Why a control frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The stream failed or ended mid-frame.
    #[error("control stream failed: {0}")]
    Stream(String),
    /// The frame's length is above [`MAX_FRAME_BYTES`].
    #[error("control frame of {0} bytes is too large")]
    TooLarge(usize),
    /// The frame does not decode.
    #[error("malformed control frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Reads the next frame; `Ok(None)` when the stream ended cleanly between frames.
pub async fn read(recv: &mut quinn::RecvStream) -> Result<Option<ControlMsg>, ControlError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(ControlError::Stream(e.to_string())),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(ControlError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| ControlError::Stream(e.to_string()))?;
    Ok(Some(crate::wire::decode(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::ReleaseSeq;

    #[test]
    fn frames_round_trip() {
        let msgs = [
            ControlMsg::Hello {
                fleet: "f".into(),
                site: Some("lab".into()),
                origin: false,
            },
            ControlMsg::Bitfield {
                sequence: ReleaseSeq(3),
                len: 70,
                words: vec![u64::MAX, 0b101],
            },
            ControlMsg::Have {
                sequence: ReleaseSeq(3),
                index: 69,
            },
        ];
        for m in msgs {
            let f = encode(&m);
            assert_eq!(
                u32::from_le_bytes(f[..4].try_into().unwrap()) as usize,
                f.len() - 4
            );
            assert_eq!(postcard::from_bytes::<ControlMsg>(&f[4..]).unwrap(), m);
        }
        assert!(postcard::from_bytes::<ControlMsg>(&[9, 9, 9]).is_err());
    }
}
