"""Import hook that plugs relspec-lmeval into a stock lm-eval 0.4.13.

lm-eval 0.4.13 reads no entry points, so ``relspec_lmeval_hook.pth`` (installed with the wheel)
imports this module at interpreter start (``python -m relspec_lmeval.cli.lmeval`` installs it
without the ``.pth``). Its finder on ``sys.meta_path`` patches four lm-eval modules as they are
imported (docs/architecture.md): ``get_model`` learns ``relspec-hf`` (lazily: no torch until
asked for); ``TaskManager`` indexes our task folder before the user's ``include_path``;
``CachingLM`` salts its keys with the neuron sets' hash; ``HarnessCLI.execute`` runs the
pre-flight (``relspec_lmeval.lm.preflight``) and turns a relspec-lmeval error into one
``lm_eval: error: relspec-hf: …`` line, exit 2.

Wrappers pass every argument on and read the one they need by name (``_wrap``); an original
without it stays unpatched, with one warning line. Stdlib only and cheap (it runs in every
Python process of the environment); never breaks an import (every error is one warning line).
``RELSPEC_DISABLE_HOOK=1`` turns it off (``install(force=True)`` overrides).
"""

import os
import sys

MODEL_NAME = "relspec-hf"
MODEL_TARGET = "relspec_lmeval.lm.hflm:RelspecHFLM"


def _warn(what, exc):
    sys.stderr.write(f"relspec-lmeval: import hook could not {what} ({type(exc).__name__}: {exc}); continuing without it\n")


def _wrap(owner, attr, name, around):
    """Replace ``owner.attr`` by a wrapper that calls ``around(original, call)``, ``call`` being
    the arguments bound to the original's signature (``call.arguments[name]``; pass them on as
    ``original(*call.args, **call.kwargs)``). Without a ``name`` parameter: the original stays."""
    import functools  # here, not at the top: neither module is loaded at interpreter start
    import inspect

    original, signature = getattr(owner, attr), ""
    where = ".".join(filter(None, (getattr(owner, "__module__", None), owner.__name__, attr)))  # a class's module too
    try:
        signature = inspect.signature(original)
        param = signature.parameters[name]
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise KeyError(name)
    except (TypeError, ValueError, KeyError):
        return _warn(f"patch {where}", TypeError(f"{attr}{signature} takes no {name!r} argument"))

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        try:
            call = signature.bind(*args, **kwargs)
        except TypeError:
            return original(*args, **kwargs)  # arguments that do not fit: lm-eval's own error
        return around(original, call)

    setattr(owner, attr, wrapper)


def _patch_registry(registry):
    def get_model(original, call):
        if call.arguments.get("model_name") == MODEL_NAME and MODEL_NAME not in registry.model_registry:
            # get_model fills lm-eval's built-in table only while it is empty, so fill it
            # first: registering ours into an empty table would hide --model hf.
            if len(registry.model_registry) == 0:
                import lm_eval.models  # noqa: F401
            if MODEL_NAME not in registry.model_registry:
                registry.model_registry.register(MODEL_NAME, target=MODEL_TARGET)
        return original(*call.args, **call.kwargs)

    _wrap(registry, "get_model", "model_name", get_model)


def _with_our_tasks(include_path):
    """``include_path`` with our task folder first (the user's folders come after it, and win)."""
    try:
        from relspec_lmeval.util.resources import task_dir

        ours = task_dir()
        user = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        return include_path if ours in [str(p) for p in user] else [ours, *user]
    except Exception as exc:  # never let our task folder break lm-eval
        _warn("add the relspec task folder", exc)
        return include_path


def _patch_task_manager(manager):
    def init(original, call):
        call.arguments["include_path"] = _with_our_tasks(call.arguments.get("include_path"))
        return original(*call.args, **call.kwargs)

    _wrap(manager.TaskManager, "__init__", "include_path", init)


def _patch_caching(model_module):
    def init(original, call):
        original(*call.args, **call.kwargs)
        lm, cache = call.arguments.get("lm"), call.args[0]
        salt = getattr(lm, "relspec_cache_salt", None)
        if salt:
            try:
                cache.dbdict = _SaltedDict(cache.dbdict, salt)
                lm.set_cache_hook(cache.get_cache_hook())
            except Exception as exc:
                _warn("salt lm-eval's response cache with the neuron sets", exc)

    _wrap(model_module.CachingLM, "__init__", "lm", init)


class _SaltedDict:
    """The cache's SqliteDict with every key prefixed by the neuron-set hash."""

    def __init__(self, inner, salt):
        self._inner = inner
        self._salt = salt + ":"

    def __contains__(self, key):
        return self._salt + key in self._inner

    def __getitem__(self, key):
        return self._inner[self._salt + key]

    def __setitem__(self, key, value):
        self._inner[self._salt + key] = value

    def __getattr__(self, name):  # commit, close, …
        return getattr(self._inner, name)


def _is_relspec_error(exc):
    # by name: importing relspec_lmeval.errors here would cost every interpreter start
    return any(c.__name__ == "RelspecError" and c.__module__ == "relspec_lmeval.errors" for c in type(exc).__mro__)


def _preflight(args):
    """Check a ``relspec-hf`` run before lm-eval's slow start (task index, weights); a check that
    breaks is one warning line, never a blocked run."""
    if getattr(args, "model", None) != MODEL_NAME and not getattr(args, "config", None):
        return  # lm-eval's own models (a --config file may name ours: the pre-flight reads it)
    try:
        from relspec_lmeval.lm.preflight import check_cli_args

        check_cli_args(args)
    except Exception as exc:
        if _is_relspec_error(exc):
            raise
        _warn("run the relspec-hf pre-flight", exc)


def _patch_cli(harness):
    def execute(original, call):
        try:
            _preflight(call.arguments["args"])
            return original(*call.args, **call.kwargs)
        except Exception as exc:
            if not _is_relspec_error(exc):
                raise
            sys.stderr.write(f"lm_eval: error: {MODEL_NAME}: {exc}\n")
            raise SystemExit(2) from None

    _wrap(harness.HarnessCLI, "execute", "args", execute)


_PATCHES = {
    "lm_eval.api.registry": _patch_registry,
    "lm_eval.tasks.manager": _patch_task_manager,
    "lm_eval.api.model": _patch_caching,
    "lm_eval._cli.harness": _patch_cli,
}


def _apply(module, patch):
    """Run ``patch`` on ``module`` once (after its import, or from ``install(force=True)``)."""
    if getattr(module, "_relspec_patched", False):
        return
    try:
        patch(module)
        module._relspec_patched = True
    except Exception as exc:
        _warn(f"patch {module.__name__}", exc)


class _PatchingLoader:
    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _apply(module, self._patch)

    def __getattr__(self, name):  # get_source, get_resource_reader, …
        return getattr(self._loader, name)


class _Finder:
    def find_spec(self, fullname, path=None, target=None):
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader, patch)
            return spec
        except Exception as exc:
            _warn(f"look up {fullname}", exc)
            return None


def install(force=False):
    """Put the finder on ``sys.meta_path`` (once). ``force`` (an entry point that asked for the
    hook): even under ``RELSPEC_DISABLE_HOOK``, and patch lm-eval modules imported before now."""
    if not force and os.environ.get("RELSPEC_DISABLE_HOOK", "") not in ("", "0"):
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    for name, patch in _PATCHES.items() if force else ():
        if name in sys.modules:
            _apply(sys.modules[name], patch)


try:
    install()
except Exception as exc:  # a .pth line must never stop Python from starting
    _warn("install itself", exc)
