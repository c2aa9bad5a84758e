//! Device registration with a fleet's provisioning key: the request a device sends to the
//! builder (`POST /api/v1/devices/register`, JSON) and the answer it gets.
//!
//! A [`Registration`] names the device by its ed25519 public key ([`DeviceId`]) and is signed by
//! that key over [`registration_payload`] ([`sign_registration`]), so nobody registers a key
//! they do not hold; [`Registration::verify_signature`] is the builder's check. The device
//! (`shoal-node`) and the builder both use these definitions.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, Envelope, Signature, SignatureEntry, SigningKey};

/// The signature kind of a registration.
pub const REGISTRATION_KIND: &str = "device-registration";

/// A registration request (`POST /api/v1/devices/register`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The fleet's provisioning key.
    pub provisioning_key: String,
    /// The device's public key (hex).
    pub device: DeviceId,
    /// Its name, unique in the fleet.
    pub name: String,
    /// Its site label (devices on one site fetch from each other first).
    #[serde(default)]
    pub site: String,
    /// Its architecture.
    pub arch: String,
    /// Its device type.
    pub device_type: String,
    /// The device key's signature over [`registration_payload`], hex.
    pub signature: Signature,
}

/// What a registered device is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The device id (hex public key).
    pub device: String,
    /// Its fleet.
    pub fleet: String,
    /// The fleet's signed trust root (hex of its canonical bytes).
    pub trust_root: String,
    /// Where to fetch the trust root again.
    pub trust_root_url: String,
    /// Where to fetch the origin's bootstrap addresses.
    pub bootstrap_url: String,
    /// The release the device should run, if any is published.
    pub target_sequence: Option<i64>,
}

/// The bytes a registration signs.
pub fn registration_payload(
    device: &DeviceId,
    name: &str,
    site: &str,
    arch: &str,
    device_type: &str,
) -> Vec<u8> {
    format!("shoal-device-registration-v1\n{device}\n{name}\n{site}\n{arch}\n{device_type}")
        .into_bytes()
}

/// A signed registration for the device with `key` (what a device sends).
pub fn sign_registration(
    key: &SigningKey,
    provisioning_key: &str,
    name: &str,
    site: &str,
    arch: &str,
    device_type: &str,
) -> Registration {
    let device = DeviceId::from(key.public_key());
    let payload = registration_payload(&device, name, site, arch, device_type);
    Registration {
        provisioning_key: provisioning_key.to_string(),
        device,
        name: name.to_string(),
        site: site.to_string(),
        arch: arch.to_string(),
        device_type: device_type.to_string(),
        signature: key.sign(REGISTRATION_KIND, &payload),
    }
}

impl Registration {
    /// Whether the registration is signed by the device key it names, over its own fields.
    pub fn verify_signature(&self) -> bool {
        let payload = registration_payload(
            &self.device,
            &self.name,
            &self.site,
            &self.arch,
            &self.device_type,
        );
        let envelope = Envelope {
            payload,
            signatures: vec![SignatureEntry {
                key_id: self.device.public_key().id(),
                signature: self.signature,
            }],
        };
        envelope
            .verify_threshold(REGISTRATION_KIND, &[self.device.public_key()], 1)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_registration_verifies_and_any_changed_field_does_not() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let r = sign_registration(&key, "shoalprov_x", "pi-1", "lab", "amd64", "generic-amd64");
        assert!(r.verify_signature());
        // The provisioning key is not signed (it is a bearer secret, checked by the builder).
        let mut other_key = r.clone();
        other_key.provisioning_key = "shoalprov_y".into();
        assert!(other_key.verify_signature());
        for change in [
            |r: &mut Registration| r.name.push('x'),
            |r: &mut Registration| r.site.push('x'),
            |r: &mut Registration| r.arch = "arm64".into(),
            |r: &mut Registration| r.device_type.push('x'),
            |r: &mut Registration| {
                r.device = DeviceId::from(SigningKey::from_bytes(&[4; 32]).public_key())
            },
        ] {
            let mut changed = r.clone();
            change(&mut changed);
            assert!(!changed.verify_signature(), "{changed:?}");
        }
    }

    #[test]
    fn the_json_form_round_trips_and_refuses_unknown_fields() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let r = sign_registration(&key, "k", "n", "", "amd64", "t");
        let mut v = serde_json::to_value(&r).unwrap();
        let back: Registration = serde_json::from_value(v.clone()).unwrap();
        assert!(back.verify_signature());
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Registration>(v).is_err());
    }
}
