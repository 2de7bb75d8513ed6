//! Probe checks: httpGet and tcpSocket.
