//! The CRI container log format.
