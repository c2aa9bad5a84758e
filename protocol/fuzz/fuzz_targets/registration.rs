//! Any bytes as a device registration (`POST /api/v1/devices/register`, JSON, before anything
//! about the sender is known): decoded (hex device key and signature included), its signature
//! checked, and what decodes re-encodes to JSON that decodes the same; any text as a device id
//! in a URL (`/api/v1/devices/{id}/status`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::DeviceId;
use shoal_protocol::registration::Registration;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Registration>(data) {
        let signed = r.verify_signature();
        let again: Registration = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again.device, r.device);
        assert_eq!(again.signature, r.signature);
        assert_eq!(
            (&again.provisioning_key, &again.name, &again.site, &again.arch, &again.device_type),
            (&r.provisioning_key, &r.name, &r.site, &r.arch, &r.device_type)
        );
        assert_eq!(again.verify_signature(), signed);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = text.parse::<DeviceId>()
    {
        assert_eq!(id.to_string().parse::<DeviceId>().ok(), Some(id));
    }
});
