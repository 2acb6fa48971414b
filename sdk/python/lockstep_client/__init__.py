"""lockstep_client: Python client of the lockstep rollout and learner services.

    from lockstep_client import RolloutClient, LearnerClient
    rollout = RolloutClient("127.0.0.1:50051")
    out = rollout.generate([[1, 2, 3]], n=2, max_tokens=8, seed=7)

The generated protobuf modules are re-exported as common_pb2, rollout_pb2 and
learner_pb2 (their gRPC stubs as rollout_pb2_grpc and learner_pb2_grpc).
See docs/sdk.md.
"""

from lockstep_client._proto.lockstep.v1 import common_pb2
from lockstep_client._proto.lockstep.v1 import learner_pb2
from lockstep_client._proto.lockstep.v1 import learner_pb2_grpc
from lockstep_client._proto.lockstep.v1 import rollout_pb2
from lockstep_client._proto.lockstep.v1 import rollout_pb2_grpc
from lockstep_client.client import (LEARNER_SERVICE, ROLLOUT_SERVICE, CallOptions,
                                    ClientOptions, Connection, HealthStatus, LearnerClient,
                                    LockstepError, RetryPolicy, RolloutClient, TlsOptions,
                                    make_trajectory)
from lockstep_client.weights import Tensor, read_safetensors, weight_update_messages

__version__ = "0.1.0"

__all__ = [
    "CallOptions", "ClientOptions", "Connection", "HealthStatus", "LEARNER_SERVICE",
    "LearnerClient", "LockstepError", "ROLLOUT_SERVICE", "RetryPolicy", "RolloutClient",
    "Tensor", "TlsOptions", "common_pb2", "learner_pb2", "learner_pb2_grpc",
    "make_trajectory", "read_safetensors", "rollout_pb2", "rollout_pb2_grpc",
    "weight_update_messages",
]
