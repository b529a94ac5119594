"""Parse DAG files as the dag-processor does (argv: heavy modules as JSON, per-file timeout, files).

Run by `crispflow validate` (`crispflow.stack.validate`) as `python -m crispflow_airflow.probes.dag_parse ...`, in its own process."""

# ruff: noqa
import importlib.util, json, os, select, signal, sys, time, traceback
import airflow.sdk
from airflow.sdk import DAG, BaseHook, Variable
from airflow.sdk.definitions._internal.contextmanager import DagContext

def forbidden(*a, **k):
    raise RuntimeError("Variable/Connection access at parse time")

Variable.get = forbidden
BaseHook.get_connection = classmethod(forbidden)
heavy, timeout, paths = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]

def parse(path):
    before = set(sys.modules)
    t = time.perf_counter()
    out = {"error": None, "dag_ids": [], "heavy": []}
    try:
        name = "unusual_prefix_" + os.path.basename(path)[:-3]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        DagContext.current_autoregister_module_name = name  # `@dag` functions called at the top level register
        spec.loader.exec_module(module)
        out["seconds"] = time.perf_counter() - t
        dags = {v for v in vars(module).values() if isinstance(v, DAG)}
        dags.update(dag for dag, _ in DagContext.autoregistered_dags)
        for dag in dags:  # what the DagBag checks before bagging a DAG (cycles, params, ...)
            dag.validate()
        out["dag_ids"] = sorted(dag.dag_id for dag in dags)
    except BaseException as exc:
        out["error"] = "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]
    out.setdefault("seconds", time.perf_counter() - t)
    out["heavy"] = [m for m in heavy if m in sys.modules and m not in before]
    return out

sys.stdout.flush()
for path in paths:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, json.dumps(parse(path)).encode())
        os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([r], [], [], left)[0]:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    else:
        os.kill(pid, signal.SIGKILL)
    os.close(r)
    os.waitpid(pid, 0)
    try:
        result = json.loads(b"".join(chunks))
    except ValueError:
        result = {"error": f"no result within {timeout:.0f} s (hung or crashed)", "dag_ids": [], "heavy": [],
                  "seconds": timeout}
    print(json.dumps({"path": path, **result}), flush=True)
