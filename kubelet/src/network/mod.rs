//! The pod network: network namespaces and CNI.
