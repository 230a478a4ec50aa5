//! Harness for multi-process cluster scenarios: starts real `realtime` node processes and drives
//! them with clients. Nothing here is linked into the server. Scenarios arrive with the cluster step.
