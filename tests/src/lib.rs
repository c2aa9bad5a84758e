//! End-to-end tests for Shoal live in `tests/tests/`; the `shoal-test-node` binary is the node
//! daemon the runtime's crash test kills and restarts.
