"""Runtime: wire format, gRPC data plane, helper worker and client trainer."""
