//! Test support: a local registry and a busybox test image (used by the test suites).
