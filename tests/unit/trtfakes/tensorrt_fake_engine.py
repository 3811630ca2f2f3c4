"""The runtime half of the fake TensorRT: Runtime, ICudaEngine, IExecutionContext.

- ``deserialize_cuda_engine`` returns None (and logs) for bytes it did not
  serialize, or that another version serialized (TensorRT's "version tag"
  assertion: engines are not portable across versions).
- Bindings (``num_bindings``, ``get_binding_*``, ``set_binding_shape``,
  ``execute_async_v2(bindings, stream_handle)``) before 10; named tensors
  (``num_io_tensors``, ``get_tensor_*``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3(stream_handle)``) from 8.5.
- Executing reads the input from the fake device memory at the address given
  and writes ``logits[n, k] = mean(x[n]) * (k + 1) + k``, taking
  ``NETWORK_MS`` of fake GPU time on the stream; it fails (returns False) with
  an input shape left dynamic or an address left unset, as TensorRT does.
"""
import json

import numpy as np

from trtfakes.tensorrt_fake_builder import PLAN_MAGIC

NETWORK_MS = 4.0


def fake_logits(x):
    """What the fake network computes from an NCHW batch."""
    means = x.reshape(x.shape[0], -1).astype(np.float64).mean(axis=1)
    k = np.arange(4, dtype=np.float64)
    return (means[:, None] * (k + 1) + k).astype(np.float32)


def engine_classes(state, ns):
    f = state.features

    class Runtime(object):
        def __init__(self, logger):
            self._logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            data = bytes(serialized_engine)
            state.calls.append(("deserialize_cuda_engine", len(data)))
            plan = None
            if data.startswith(PLAN_MAGIC):
                try:
                    plan = json.loads(data[len(PLAN_MAGIC):].decode("utf-8"))
                except ValueError:
                    plan = None
            if plan is None or plan.get("version") != state.version:
                state.log.append("Serialization assertion failed: magic tag or version tag does not match")
                return None
            return engine_cls(plan)

    class EngineBase(object):
        def __init__(self, plan):
            self.plan = plan
            self._io = [(n, tuple(s), d, True) for n, s, d in plan["inputs"]]
            self._io += [(n, tuple(s), d, False) for n, s, d in plan["outputs"]]

        @property
        def num_optimization_profiles(self):
            return 1 if self.plan["profile"] else 0

        def create_execution_context(self):
            return context_cls(self)

        def _find(self, name):
            for i, entry in enumerate(self._io):
                if entry[0] == name:
                    return i
            raise KeyError(name)

        def _profile(self, name):
            return tuple(tuple(s) for s in self.plan["profile"][name])

    class BindingEngine(object):
        @property
        def num_bindings(self):
            return len(self._io)

        def get_binding_name(self, index):
            return self._io[index][0]

        def binding_is_input(self, index):
            return self._io[index if isinstance(index, int) else self._find(index)][3]

        def get_binding_shape(self, index):
            return self._io[index if isinstance(index, int) else self._find(index)][1]

        def get_binding_dtype(self, index):
            return _dtype(self._io[index if isinstance(index, int) else self._find(index)][2])

        def get_profile_shape(self, profile_index, binding):
            name = binding if not isinstance(binding, int) else self._io[binding][0]
            return self._profile(name)

    class NamedEngine(object):
        @property
        def num_io_tensors(self):
            return len(self._io)

        def get_tensor_name(self, index):
            return self._io[index][0]

        def get_tensor_mode(self, name):
            mode = ns["TensorIOMode"]
            return mode.INPUT if self._io[self._find(name)][3] else mode.OUTPUT

        def get_tensor_shape(self, name):
            return self._io[self._find(name)][1]

        def get_tensor_dtype(self, name):
            return _dtype(self._io[self._find(name)][2])

        def get_tensor_profile_shape(self, name, profile_index):
            return self._profile(name)

    def _dtype(value):
        dt = ns["DataType"]
        return [dt.FLOAT, dt.HALF, dt.INT8, dt.INT32][value]

    class ContextBase(object):
        def __init__(self, engine):
            self.engine = engine
            self._shapes = dict((n, s) for n, s, d, is_in in engine._io if is_in)
            self._addresses = {}

        def _set_shape(self, name, shape):
            low, _, high = self.engine._profile(name) if self.engine.plan["profile"] else ((), (), ())
            if low and not all(a <= b <= c for a, b, c in zip(low, shape, high)):
                state.log.append("input shape {} outside the profile".format(shape))
                return False
            self._shapes[name] = tuple(shape)
            return True

        def _shape(self, index):
            name, shape, _, is_input = self.engine._io[index]
            if is_input:
                return self._shapes[name]
            batch = list(self._shapes.values())[0][0]
            return (batch,) + tuple(shape[1:])

        def _run(self, addresses, stream_handle, api):
            n_inputs = len(self._shapes)
            shapes = [self._shape(i) for i in range(len(self.engine._io))]
            if any(d < 0 for s in shapes for d in s) or not all(addresses):
                state.log.append("{}: input shapes not all specified or an address unset".format(api))
                return False
            numpy_types = {0: np.float32, 1: np.float16}
            io = self.engine._io
            x = state.memory.read(addresses[0], shapes[0], numpy_types[io[0][2]])
            state.calls.append((api, shapes[0][0]))
            logits = fake_logits(x).astype(numpy_types[io[n_inputs][2]])
            state.memory.write(addresses[n_inputs], logits)
            state.memory.launch(stream_handle, api, NETWORK_MS)
            return True

    class BindingContext(object):
        def set_binding_shape(self, binding, shape):
            return self._set_shape(self.engine._io[binding][0], shape)

        def get_binding_shape(self, binding):
            return self._shape(binding)

        def execute_async_v2(self, bindings, stream_handle):
            return self._run([int(b) for b in bindings], stream_handle, "execute_async_v2")

    class NamedContext(object):
        def set_input_shape(self, name, shape):
            return self._set_shape(name, shape)

        def get_tensor_shape(self, name):
            return self._shape(self.engine._find(name))

        def set_tensor_address(self, name, memory):
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle):
            addresses = [self._addresses.get(n, 0) for n, _, _, _ in self.engine._io]
            return self._run(addresses, stream_handle, "execute_async_v3")

    engine_mixins = ((BindingEngine,) if f["bindings"] else ()) + ((NamedEngine,) if f["named_tensors"] else ())
    context_mixins = ((BindingContext,) if f["bindings"] else ()) + ((NamedContext,) if f["named_tensors"] else ())
    engine_cls = type("ICudaEngine", engine_mixins + (EngineBase,), {})
    context_cls = type("IExecutionContext", context_mixins + (ContextBase,), {})
    return {"Runtime": Runtime, "ICudaEngine": engine_cls, "IExecutionContext": context_cls}
