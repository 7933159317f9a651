"""Small ONNX models written straight to protobuf's wire format, for tests that need models
whose outputs reveal a version or that fail on purpose (the test environment has no `onnx`)."""
import struct

FLOAT, INT64 = 1, 7


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _int(field, n):
    return _varint(field << 3) + _varint(n)


def _bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name, elem_type, dims):
    shape = b"".join(
        _bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _tensor(name, dims, values):
    body = b"".join(_int(1, d) for d in dims) + _int(2, FLOAT) + _bytes(8, name)
    return body + _bytes(9, struct.pack(f"<{len(values)}f", *values))


def _node(op, inputs, outputs, attrs=b""):
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
            + _bytes(3, f"{op}_{outputs[0]}") + _bytes(4, op) + attrs)


def _model(nodes, inputs, outputs, initializers=()):
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "g")
             + b"".join(_bytes(5, t) for t in initializers)
             + b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs))
    opset = _bytes(1, "") + _int(2, 13)
    return _int(1, 7) + _bytes(2, "infera-tests") + _bytes(7, graph) + _bytes(8, opset)


def scaled(weights):
    """Y = X * weights, X and Y FP32 [batch, len(weights)]."""
    n = len(weights)
    return _model([_node("Mul", ["X", "W"], ["Y"])],
                  [_value_info("X", FLOAT, ["batch", n])], [_value_info("Y", FLOAT, ["batch", n])],
                  [_tensor("W", [n], weights)])


def plus(value, n=4):
    """Y = X + value, X and Y FP32 [batch, n]: the output reveals which model answered."""
    return _model([_node("Add", ["X", "C"], ["Y"])],
                  [_value_info("X", FLOAT, ["batch", n])], [_value_info("Y", FLOAT, ["batch", n])],
                  [_tensor("C", [1], [float(value)])])


def fails_unless_one():
    """Y = Reshape(X, Cast(X)), X and Y FP32 [1]: X = 1 answers 1, any other value makes the
    runtime fail (a reshape of one element to X elements)."""
    to = _bytes(5, _bytes(1, "to") + _int(3, INT64) + _int(20, 2))  # attribute to=INT64 (an INT)
    return _model([_node("Cast", ["X"], ["S"], to), _node("Reshape", ["X", "S"], ["Y"])],
                  [_value_info("X", FLOAT, [1])], [_value_info("Y", FLOAT, [1])])


def identity1():
    """Y = X, FP32 [1]."""
    return _model([_node("Identity", ["X"], ["Y"])],
                  [_value_info("X", FLOAT, [1])], [_value_info("Y", FLOAT, [1])])
