//! The container runtime: runc, OCI bundles, the shim, cgroups, overlayfs.
