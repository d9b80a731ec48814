"""A strict stand-in for CuPy on machines without a GPU: NumPy arithmetic behind CuPy's rules on
where an array lives, so the ``xp is not np`` branches run in CI and host/device mistakes fail here
as they would on a GPU.

What it enforces (as CuPy does; see cupy/cupy#589, #593, #3421):

- ``np.asarray(device_array)`` (and anything else that calls ``__array__``: NumPy indexing with a
  device index, ``host[...] = device``) raises ``TypeError``: device -> host only through ``.get()``,
  ``xp.asnumpy`` or :func:`cryoframe.backend.to_host`;
- an ``xp`` function, a ufunc or an operator given a device array and a non-scalar NumPy array raises
  ``TypeError`` (only ``xp.asarray``/``xp.array``/``xp.ascontiguousarray`` take host arrays);
- reductions return 0-d device arrays, not NumPy scalars (``float()``/``int()``/``bool()`` of one are
  allowed: they synchronise on a GPU);
- NumPy functions called on device arrays dispatch to ``xp`` (``__array_function__``), as CuPy's do.

- ``xp.<name>`` exists only for the names CuPy's own ``__init__`` modules define (``cupy``, ``cupy.fft``,
  ``cupy.linalg``, ``cupy.random``), and an array has only the methods and attributes of
  ``cupy.ndarray`` (all listed in ``tests/data/cupy_api.json``): a NumPy function or method CuPy
  lacks fails here.

Lenient where CuPy is: a host index array or a host value in ``device[idx] = value``.  It does not
emulate ``ElementwiseKernel``/``cupy.cuda`` (the fused GMM kernel needs a real GPU), nor CuPy's
missing keyword arguments or dtype rules.
"""

from __future__ import annotations

import json
import operator
import types
from pathlib import Path
from typing import Any

import numpy as np

_API: dict[str, list[str]] = json.loads((Path(__file__).parent / "data" / "cupy_api.json").read_text())
_NDARRAY = frozenset(_API["ndarray"])
_HOST_OK = {"asarray", "array", "ascontiguousarray", "asanyarray", "asnumpy", "get_array_module"}


class DeviceArray:
    """An array on the fake device: a NumPy array that refuses implicit conversion to the host."""

    __slots__ = ("_a",)
    __array_priority__ = 100.0

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # -- the host boundary -----------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return _call(getattr(ufunc, method), inputs, kwargs, ufunc.__name__)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        return _call(func, args, kwargs, func.__name__)

    # -- array attributes and methods --------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))
    real = property(lambda self: DeviceArray(self._a.real), lambda self, v: setattr(self._a, "real", _dev(v)))
    imag = property(lambda self: DeviceArray(self._a.imag), lambda self, v: setattr(self._a, "imag", _dev(v)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # no __array_interface__/__array_struct__: NumPy would read the data
            raise AttributeError(name)
        if name not in _NDARRAY:
            raise AttributeError(f"fake cupy: cupy.ndarray has no attribute {name!r}")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *a, **k: _call(attr, a, k, name)

    def item(self) -> Any:
        return self._a.item()

    def tolist(self) -> Any:
        return self._a.tolist()

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        return (_wrap(x) for x in self._a)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_index(key)] = value._a if isinstance(value, DeviceArray) else value

    def __bool__(self) -> bool:
        return bool(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"


def _binary(op: Any, name: str) -> tuple[Any, Any, Any]:
    def fwd(self: DeviceArray, other: Any) -> Any:
        return _call(op, (self, other), {}, name)

    def rev(self: DeviceArray, other: Any) -> Any:
        return _call(op, (other, self), {}, name)

    def inplace(self: DeviceArray, other: Any) -> DeviceArray:
        _check_operands((other,), name)
        iop = getattr(operator, f"i{name}")
        self._a = iop(self._a, other._a if isinstance(other, DeviceArray) else other)
        return self

    return fwd, rev, inplace


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _op = getattr(operator, f"{_name}_" if _name in ("and", "or") else _name)
    _f, _r, _i = _binary(_op, _name)
    setattr(DeviceArray, f"__{_name}__", _f)
    setattr(DeviceArray, f"__r{_name}__", _r)
    setattr(DeviceArray, f"__i{_name}__", _i)
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(DeviceArray, f"__{_name}__", _binary(getattr(operator, _name), _name)[0])
for _name in ("neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", (lambda op: lambda self: DeviceArray(op(self._a)))(getattr(operator, _name)))
DeviceArray.__hash__ = None  # type: ignore[assignment]


def _dev(x: Any) -> Any:
    return x._a if isinstance(x, DeviceArray) else x


def _index(key: Any) -> Any:
    if isinstance(key, tuple):
        return tuple(_dev(k) for k in key)
    return _dev(key)


def _is_host_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.ndim > 0


def _check_operands(args: Any, name: str) -> None:
    for x in args:
        if _is_host_array(x):
            raise TypeError(f"fake cupy: {name}() got a host numpy.ndarray {x.shape} beside device arrays "
                            "(CuPy: Unsupported type <class 'numpy.ndarray'>)")
        if isinstance(x, list | tuple):
            _check_operands(x, name)


def _unwrap(x: Any) -> Any:
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic) and not isinstance(x, np.dtype):
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _call(fn: Any, args: Any, kwargs: dict[str, Any], name: str) -> Any:
    if name not in _HOST_OK:
        _check_operands(args, name)
        _check_operands(tuple(kwargs.values()), name)
    out = kwargs.get("out")
    res = fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
    if isinstance(out, DeviceArray):
        return out
    return _wrap(res)


def _function(fn: Any, name: str) -> Any:
    def f(*args: Any, **kwargs: Any) -> Any:
        return _call(fn, args, kwargs, name)

    f.__name__ = name
    return f


class _Namespace(types.ModuleType):
    """``numpy`` (or one of its submodules) with every function going through :func:`_call`."""

    def __init__(self, name: str, mod: types.ModuleType, api: str) -> None:
        super().__init__(name)
        self._mod = mod
        self._api = set(_API[api])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._api:
            raise AttributeError(f"fake cupy: CuPy has no {self.__name__}.{name}")
        attr = getattr(self._mod, name)
        if isinstance(attr, types.ModuleType):
            if name not in _API:
                raise AttributeError(f"fake cupy: {self.__name__}.{name} is not emulated")
            val: Any = _Namespace(f"{self.__name__}.{name}", attr, name)
        elif isinstance(attr, type):  # dtypes and classes (np.float32, np.dtype)
            val = attr
        elif callable(attr):
            val = _function(attr, name)
        else:
            val = attr
        setattr(self, name, val)
        return val


def make() -> types.ModuleType:
    """A fresh fake ``cupy`` module."""
    cp = _Namespace("cupy", np, "cupy")
    cp.ndarray = DeviceArray  # type: ignore[attr-defined]

    def asarray(x: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
        if isinstance(x, DeviceArray):
            return x if dtype is None or x.dtype == np.dtype(dtype) else DeviceArray(x._a.astype(dtype))
        return DeviceArray(np.array(_unwrap(x), dtype=dtype, order=order or "K"))

    def array(x: Any, dtype: Any = None, copy: bool = True, order: Any = None) -> DeviceArray:
        return DeviceArray(np.array(_unwrap(x), dtype=dtype, copy=copy, order=order or "K"))

    def ascontiguousarray(x: Any, dtype: Any = None) -> DeviceArray:
        return DeviceArray(np.ascontiguousarray(_unwrap(x), dtype=dtype))

    def asnumpy(x: Any) -> np.ndarray:
        return x.get() if isinstance(x, DeviceArray) else np.asarray(x)

    cp.asarray = asarray  # type: ignore[attr-defined]
    cp.array = array  # type: ignore[attr-defined]
    cp.ascontiguousarray = ascontiguousarray  # type: ignore[attr-defined]
    cp.asanyarray = asarray  # type: ignore[attr-defined]
    cp.asnumpy = asnumpy  # type: ignore[attr-defined]
    cp.get_array_module = lambda *a: cp  # type: ignore[attr-defined]
    return cp
