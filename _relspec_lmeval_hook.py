"""Import hook that plugs relspec-lmeval into a stock lm-eval 0.4.13.

lm-eval 0.4.13 reads no entry points, so ``relspec_lmeval_hook.pth`` (installed with the
wheel) imports this module at interpreter start. It only puts a finder on ``sys.meta_path``;
the patches run when lm-eval's own modules are imported:

* ``lm_eval.api.registry``: ``get_model`` learns ``relspec-hf`` (a lazy entry, so torch is
  not imported until the model is asked for);
* ``lm_eval.tasks.manager``: every ``TaskManager`` indexes our task folder, before the
  user's ``include_path`` (keyword or positional) so users can still override our tasks; a
  ``TaskManager.__init__`` without ``include_path`` is left alone (one warning line);
* ``lm_eval.api.model``: ``CachingLM`` salts its keys with the applied neuron sets' hash,
  so ``--use_cache`` never serves an unablated answer to an ablated run;
* ``lm_eval._cli.harness``: a relspec-lmeval error (a bad ``neuron_set=``, a set of another
  model, …) ends ``lm_eval`` as one ``lm_eval: error: relspec-hf: …`` line and exit status 2
  instead of a traceback; every other error is lm-eval's own.

This module must stay stdlib-only and cheap (it runs in every Python process of the
environment), and must never break an import: every error is reduced to one warning line.
``RELSPEC_DISABLE_HOOK=1`` turns it off.
"""

import os
import sys

MODEL_NAME = "relspec-hf"
MODEL_TARGET = "relspec_lmeval.lm.hflm:RelspecHFLM"


def _warn(what, exc):
    sys.stderr.write(f"relspec-lmeval: import hook could not {what} ({type(exc).__name__}: {exc}); continuing without it\n")


def _patch_registry(registry):
    original = registry.get_model

    def get_model(model_name):
        if model_name == MODEL_NAME and MODEL_NAME not in registry.model_registry:
            # get_model fills lm-eval's built-in table only while it is empty, so fill it
            # first: registering ours into an empty table would hide --model hf.
            if len(registry.model_registry) == 0:
                import lm_eval.models  # noqa: F401
            if MODEL_NAME not in registry.model_registry:
                registry.model_registry.register(MODEL_NAME, target=MODEL_TARGET)
        return original(model_name)

    get_model.__wrapped__ = original
    get_model.__doc__ = original.__doc__
    registry.get_model = get_model


def _include_path_position(init):
    """Where ``include_path`` sits in ``init``'s ``*args`` (self excluded): an int, None when
    it is keyword-only, or a string saying why the signature is not one we know."""
    import inspect  # here, not at the top: this runs only when lm-eval's manager is imported

    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError) as exc:
        return f"its __init__ signature cannot be read ({exc})"
    params = list(signature.parameters.values())
    names = [p.name for p in params]
    if "include_path" not in names:
        return f"__init__{signature} has no include_path parameter"
    param = params[names.index("include_path")]
    if param.kind is param.KEYWORD_ONLY:
        return None
    if param.kind is not param.POSITIONAL_OR_KEYWORD or params[0].kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
        return f"__init__{signature} takes include_path in a way the hook does not know"
    return names.index("include_path") - 1  # self is not in *args


def _patch_task_manager(manager):
    cls = manager.TaskManager
    original = cls.__init__
    position = _include_path_position(original)
    if isinstance(position, str):  # another lm-eval: leave its TaskManager alone
        _warn("add the relspec task folder to TaskManager", TypeError(position))
        return

    def __init__(self, *args, **kwargs):
        given_positionally = position is not None and len(args) > position
        if given_positionally and "include_path" in kwargs:
            return original(self, *args, **kwargs)  # lm-eval's own "multiple values" error
        include_path = args[position] if given_positionally else kwargs.get("include_path")
        try:
            from relspec_lmeval.util.resources import task_dir

            ours = task_dir()
            if include_path is None:
                user = []
            elif isinstance(include_path, (list, tuple)):
                user = list(include_path)
            else:
                user = [include_path]
            if ours not in [str(p) for p in user]:
                include_path = [ours, *user]
        except Exception as exc:  # never let our task folder break lm-eval
            _warn("add the relspec task folder", exc)
        if given_positionally:
            args = (*args[:position], include_path, *args[position + 1 :])
        else:
            kwargs["include_path"] = include_path
        return original(self, *args, **kwargs)

    __init__.__wrapped__ = original
    cls.__init__ = __init__


def _patch_caching(model_module):
    cls = model_module.CachingLM
    original = cls.__init__

    def __init__(self, lm, cache_db):
        original(self, lm, cache_db)
        salt = getattr(lm, "relspec_cache_salt", None)
        if salt:
            self.dbdict = _SaltedDict(self.dbdict, salt)
            lm.set_cache_hook(self.get_cache_hook())

    __init__.__wrapped__ = original
    cls.__init__ = __init__


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


def _patch_cli(harness):
    cls = harness.HarnessCLI
    original = cls.execute

    def execute(self, args):
        try:
            return original(self, args)
        except Exception as exc:
            if not _is_relspec_error(exc):
                raise
            sys.stderr.write(f"lm_eval: error: {MODEL_NAME}: {exc}\n")
            raise SystemExit(2) from None

    execute.__wrapped__ = original
    cls.execute = execute


_PATCHES = {
    "lm_eval.api.registry": _patch_registry,
    "lm_eval.tasks.manager": _patch_task_manager,
    "lm_eval.api.model": _patch_caching,
    "lm_eval._cli.harness": _patch_cli,
}


class _PatchingLoader:
    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            self._patch(module)
        except Exception as exc:
            _warn(f"patch {module.__name__}", exc)

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


def install():
    if os.environ.get("RELSPEC_DISABLE_HOOK", "") not in ("", "0"):
        return
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


try:
    install()
except Exception as exc:  # a .pth line must never stop Python from starting
    _warn("install itself", exc)
