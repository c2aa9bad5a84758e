//! End-to-end tests for Shoal live in `tests/tests/`.
