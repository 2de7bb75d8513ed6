//! Images: pull, content store, unpacked layers.
//!
//! [`ImageStore::ensure`] makes an image available on the node: it resolves the reference
//! (docker.io short names, registry mirrors, plain HTTP for loopback and `insecure`
//! registries), authenticates (basic or bearer token, from `imagePullSecrets` parsed with
//! [`parse_docker_config`]), downloads the manifest, config and layer blobs into a
//! content-addressed store (every blob verified against its sha256 digest) and unpacks every
//! layer once into its own directory, with whiteouts in the overlayfs format, so that the
//! runtime can stack the layers as overlay `lowerdir`s.

pub mod unpack;
