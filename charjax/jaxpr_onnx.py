"""A JAX function's jaxpr written as an ONNX graph: the inference networks charjax trains.

`to_onnx(f, shape)` traces `f` (one float32 input whose first dimension, the batch, is
free) and maps each JAX primitive of its jaxpr to ONNX operators (opset 17): convolutions
(NHWC/HWIO, as `lax.conv_general_dilated` takes them, transposed around ONNX's NCHW `Conv`),
matrix products, element-wise arithmetic, max and sum reductions, reshapes, broadcasts,
slices, transposes and casts; nested jaxprs (`jit`, `custom_jvp`/`custom_vjp` functions)
are inlined. Closed-over arrays (the trained parameters) become initializers. A primitive
outside that set is refused by name (`UnsupportedPrimitive`).

Why not a general converter (jax2onnx): its releases pin orbax-checkpoint below the version
charjax uses and pull in Equinox, Hugging Face Hub and more; charjax's networks need only
the primitives above, and `onnx` (graph building) is the only dependency here.
"""

from __future__ import annotations

import itertools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

OPSET = 17


class UnsupportedPrimitive(ValueError):
  """The function uses a JAX primitive this converter does not write."""


def _onnx():
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import helper  # pylint: disable=g-import-not-at-top
  return onnx, helper


_ELEMENTWISE = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max',
                'min': 'Min', 'exp': 'Exp', 'log': 'Log', 'neg': 'Neg', 'tanh': 'Tanh',
                'logistic': 'Sigmoid', 'sqrt': 'Sqrt', 'abs': 'Abs', 'pow': 'Pow'}
_IDENTITY = {'stop_gradient', 'copy', 'copy_p', 'optimization_barrier'}
_INNER = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')


class _Graph:
  """Nodes, initializers and fresh names while a jaxpr is written."""

  def __init__(self):
    self.onnx, self.helper = _onnx()
    self.nodes, self.initializers, self._ids = [], [], itertools.count()

  def name(self, hint: str = 't') -> str:
    return f'{hint}_{next(self._ids)}'

  def const(self, value, hint: str = 'c') -> str:
    array = np.asarray(value)
    name = self.name(hint)
    self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
    return name

  def node(self, op: str, inputs: list[str], **attributes) -> str:
    out = self.name(op.lower())
    self.nodes.append(self.helper.make_node(op, inputs, [out], **attributes))
    return out


def _is_symbolic(d) -> bool:
  return not isinstance(d, (int, np.integer))


def _shape_const(g: _Graph, shape) -> str:
  """A Reshape target: the (single) free dimension as -1."""
  dims = [-1 if _is_symbolic(d) else int(d) for d in shape]
  if dims.count(-1) > 1:
    raise UnsupportedPrimitive(f'reshape to {shape}: more than one free dimension')
  return g.const(np.array(dims, np.int64), 'shape')


def _write(g: _Graph, jaxpr, consts, args) -> list[str]:
  """Writes `jaxpr` with `consts`/`args` (ONNX names or arrays); returns its outputs' names."""
  env = {}

  def read(v):
    if isinstance(v, jax.extend.core.Literal):
      return g.const(np.asarray(v.val, dtype=v.aval.dtype))
    return env[v]

  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value if isinstance(value, str) else g.const(np.asarray(value), 'param')
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    prim, params = eqn.primitive.name, eqn.params
    ins = [read(v) for v in eqn.invars]
    out_aval = eqn.outvars[0].aval
    inner = next((params[k] for k in _INNER if k in params), None)
    if inner is not None:  # jit, custom_jvp_call, custom_vjp_call, closed_call: inline
      closed = inner if hasattr(inner, 'jaxpr') else jax.extend.core.ClosedJaxpr(inner, [])
      outs = _write(g, closed.jaxpr, closed.consts, ins)
      for var, name in zip(eqn.outvars, outs):
        env[var] = name
      continue
    if prim in _ELEMENTWISE:
      out = g.node(_ELEMENTWISE[prim], ins)
    elif prim in _IDENTITY:
      out = g.node('Identity', ins[:1])
    elif prim == 'integer_pow':
      out = g.node('Pow', [ins[0], g.const(np.asarray(params['y'], out_aval.dtype))])
    elif prim == 'convert_element_type':
      out = g.node('Cast', ins, to=g.helper.np_dtype_to_tensor_dtype(np.dtype(out_aval.dtype)))
    elif prim in ('reshape', 'squeeze', 'expand_dims'):
      out = g.node('Reshape', [ins[0], _shape_const(g, out_aval.shape)])
    elif prim == 'broadcast_in_dim':
      # Rank-expanded with 1s, then to the full shape (a free batch dimension broadcasts
      # by ONNX's rules in the ops that consume it).
      shape, dims = params['shape'], params['broadcast_dimensions']
      in_shape = eqn.invars[0].aval.shape
      ones = [1] * len(shape)
      for i, d in enumerate(dims):
        ones[d] = in_shape[i]
      out = g.node('Reshape', [ins[0], _shape_const(g, ones)])
      if not any(_is_symbolic(d) for d in shape):
        out = g.node('Expand', [out, g.const(np.array(shape, np.int64), 'shape')])
    elif prim == 'transpose':
      out = g.node('Transpose', ins, perm=list(params['permutation']))
    elif prim in ('reduce_max', 'reduce_sum', 'reduce_min'):
      op = {'reduce_max': 'ReduceMax', 'reduce_sum': 'ReduceSum', 'reduce_min': 'ReduceMin'}
      axes = [int(a) for a in params['axes']]
      if prim == 'reduce_sum':  # opset 13+: axes are an input
        out = g.node('ReduceSum', [ins[0], g.const(np.array(axes, np.int64), 'axes')],
                     keepdims=0)
      else:
        out = g.node(op[prim], ins, axes=axes, keepdims=0)
    elif prim == 'slice':
      starts, limits = params['start_indices'], params['limit_indices']
      strides = params['strides'] or (1,) * len(starts)
      axes = [i for i, (s, l, d) in enumerate(zip(starts, limits, eqn.invars[0].aval.shape))
              if not (s == 0 and l == d)]
      out = g.node('Slice', [ins[0], g.const(np.array([starts[a] for a in axes], np.int64)),
                             g.const(np.array([limits[a] for a in axes], np.int64)),
                             g.const(np.array(axes, np.int64)),
                             g.const(np.array([strides[a] for a in axes], np.int64))])
    elif prim == 'dot_general':
      (lc, rc), (lb, rb) = params['dimension_numbers']
      lrank = len(eqn.invars[0].aval.shape)
      if lb or rb or tuple(lc) != (lrank - 1,) or tuple(rc) != (0,):
        raise UnsupportedPrimitive(f'dot_general with dimension numbers '
                                   f'{params["dimension_numbers"]} (only x @ w)')
      out = g.node('MatMul', ins)
    elif prim == 'conv_general_dilated':
      out = _conv(g, eqn, ins)
    else:
      raise UnsupportedPrimitive(f'JAX primitive {prim!r} has no ONNX translation here')
    env[eqn.outvars[0]] = out
  return [read(v) for v in jaxpr.outvars]


def _conv(g: _Graph, eqn, ins) -> str:
  p = eqn.params
  dn = p['dimension_numbers']
  if (dn.lhs_spec, dn.rhs_spec, dn.out_spec) != ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)):
    raise UnsupportedPrimitive(f'convolution layout {dn} (NHWC, HWIO expected)')
  if p['feature_group_count'] != 1 or p['batch_group_count'] != 1 or any(
      d != 1 for d in p['lhs_dilation']):
    raise UnsupportedPrimitive('grouped or transposed convolution')
  kernel = g.node('Transpose', [ins[1]], perm=[3, 2, 0, 1])            # HWIO -> OIHW
  x = g.node('Transpose', [ins[0]], perm=[0, 3, 1, 2])                 # NHWC -> NCHW
  (top, bottom), (left, right) = p['padding']
  y = g.node('Conv', [x, kernel], strides=list(p['window_strides']),
             dilations=list(p['rhs_dilation']), pads=[top, left, bottom, right])
  return g.node('Transpose', [y], perm=[0, 2, 3, 1])                   # NCHW -> NHWC


def to_onnx(f, shape: tuple[int, ...], *, input_name: str = 'images',
            output_name: str = 'probabilities', model_name: str = 'charjax'):
  """The ONNX model of `f` for float32 inputs of `shape` with a free first (batch) dimension."""
  onnx, helper = _onnx()
  batch, = jax.export.symbolic_shape('batch')
  closed = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((batch,) + tuple(shape[1:]), jnp.float32))
  g = _Graph()
  outs = _write(g, closed.jaxpr, closed.consts, [input_name])
  if len(outs) != 1:
    raise UnsupportedPrimitive(f'{len(outs)} outputs (one expected)')
  g.nodes.append(helper.make_node('Identity', [outs[0]], [output_name]))
  out_aval = closed.jaxpr.outvars[0].aval
  dims = lambda s: ['batch' if _is_symbolic(d) else int(d) for d in s]
  graph = helper.make_graph(
      g.nodes, model_name,
      [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT,
                                     ['batch'] + list(shape[1:]))],
      [helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT,
                                     dims(out_aval.shape))],
      initializer=g.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='charjax')
  model.ir_version = 8  # readable by onnxruntime releases of the last years
  onnx.checker.check_model(model)
  return model
