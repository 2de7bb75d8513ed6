//! Images: pull, content store, unpacked layers.
