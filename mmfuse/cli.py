"""The `mmfuse` command line: one subcommand per job, each delegating to the
package that owns it (pipeline/, serving/). Heavy imports happen inside the
subcommands so that `mmfuse --help` and input errors answer at once."""
import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings

from dataset import pseudonyms
from dataset.contract import DatasetError, validate_for_run
from dataset.converters import convert
from dataset.sample import write_sample_dataset
from dataset.synthetic import write_synthetic_dataset
from evaluation.metrics import DEFAULT_KS
from mmfuse import progress
from mmfuse.config import (
    SPLIT_METHODS,
    ConfigError,
    PipelineSettings,
    config_hash,
    load_config,
    reference,
    to_dict,
    to_yaml,
)

# `mmfuse run`'s log file, in its run directory.
LOG_FILE = "mmfuse.log"

CONVERTERS = ("movielens-100k", "fashion-small", "home-depot", "online-retail")

# Flags that are shorthands for configuration keys, by command.
SHORTHANDS = {
    "run": {"modalities": "trainer.modalities", "split": "pipeline.split", "epochs": "trainer.epochs",
            "seed": "trainer.seed", "rating_weight": "trainer.rating_weight",
            "min_recall": "gate.min_recall"},
    "compile": {"image": "kubeflow.image", "data": "kubeflow.data",
                "pipeline_root": "kubeflow.pipeline_root", "serving_dir": "kubeflow.serving_dir"},
    "serve": {"port": "serving.port", "rest_port": "serving.rest_port", "host": "serving.host",
              "poll_seconds": "serving.poll_seconds",
              "max_request_bytes": "serving.max_request_bytes",
              "batching_parameters_file": "serving.batching_parameters_file",
              "tensorflow_intra_op_parallelism": "serving.intra_op_threads",
              "tensorflow_inter_op_parallelism": "serving.inter_op_threads",
              "tls_cert": "serving.tls_cert", "tls_key": "serving.tls_key",
              "tls_client_ca": "serving.tls_client_ca"},
}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="configuration file (see `mmfuse config show`); default: all defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set trainer.epochs=8 (repeatable)")


def _settings(args, command: str):
    """The effective configuration: the file, then the shorthand flags given,
    then each --set. A bad key or value raises ConfigError naming it (and its flag)."""
    shorthands = SHORTHANDS.get(command, {})
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in shorthands.items()
                 if getattr(args, flag, None) is not None]
    try:
        return load_config(args.config, overrides + list(args.overrides))
    except ConfigError as error:
        message = str(error)
        for flag, key in shorthands.items():
            if message.startswith(key) and getattr(args, flag, None) is not None:
                message = f"{key} (--{flag.replace('_', '-')}){message[len(key):]}"
        raise ConfigError(message) from None


def _cutoffs(text: str):
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(
            f"--k takes comma-separated positive whole numbers, not {text!r}")
    return ks


def _item_list(text: str):
    """"a, b,,c" -> ["a", "b", "c"]; "" is an empty history."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _at_least(minimum, kind=int, what: str = "a whole number"):
    """An argparse type: a finite `kind` (int or float) of at least `minimum`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = minimum - 1
        if not minimum <= value < float("inf"):  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected {what} >= {minimum}, not {text!r}")
        return value
    return parse


def _add_user_key_argument(parser: argparse.ArgumentParser, needed: str = "") -> None:
    parser.add_argument("--user-key-file", default=PipelineSettings().user_key_file,
                        help="the key users were pseudonymised with (pipeline.user_key_file "
                             f"of the run; default %(default)s){needed}")


def _add_question_arguments(parser: argparse.ArgumentParser) -> None:
    """The four questions, as `mmfuse query` and `mmfuse predict` both ask them."""
    parser.add_argument("--user", help="recommend for this user, or personalise --text")
    asked = parser.add_mutually_exclusive_group()
    asked.add_argument("--text", help="search by text")
    asked.add_argument("--image", help="search by an image file (JPEG or PNG)")
    asked.add_argument("--item", help="items similar to this item")
    asked.add_argument("--recent", type=_item_list, metavar="ID,ID,...",
                       help="recommend from the items the user (or, without --user, an "
                            "anonymous visitor) just interacted with, newest first")
    parser.add_argument("--k", type=_at_least(1), default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    _add_user_key_argument(parser, ", needed with --user")


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the TF Serving gRPC server is and how to reach it (`mmfuse query`, `mmfuse demo`)."""
    parser.add_argument("--server", required=True, help="HOST:PORT")
    parser.add_argument("--model-name", default="mmfuse")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--tls", action="store_true", help="connect over TLS (implied by the "
                                                           "--tls-* options)")
    parser.add_argument("--tls-ca", help="PEM CA certificate(s) to trust (default: the system's)")
    parser.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")


def _credentials(args):
    """TLS credentials from the --tls options, or None (plaintext); ValueError
    naming an unreadable file or a certificate without its key."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    from serving import client

    return client.tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfuse", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on a dataset directory")
    run.add_argument("--data", help="dataset directory (default: generate the embedded sample "
                                    "into OUT/sample-data)")
    run.add_argument("--out", required=True, help="run directory (pipeline outputs, serving/)")
    _add_config_arguments(run)
    run.add_argument("--modalities", help="trainer.modalities, comma-separated: id,text,image")
    run.add_argument("--split", help="pipeline.split: random, temporal or last")
    run.add_argument("--epochs", help="trainer.epochs (0 exports the untrained model)")
    run.add_argument("--seed", help="trainer.seed")
    run.add_argument("--rating-weight", help="trainer.rating_weight: also train a head "
                                             "predicting ratings, its loss weighted by this")
    run.add_argument("--min-recall", help="gate.min_recall: the release floor on recall@k")
    run.add_argument("--verbose", action="store_true",
                     help=f"also show TensorFlow's, TFX's and Beam's logs, which always go to "
                          f"OUT/{LOG_FILE}")
    run.add_argument("--report", action="store_true",
                     help="also write the run's report, OUT/report.html (see `mmfuse report`)")
    run.add_argument("--no-cache", action="store_true",
                     help="run every component, even those whose inputs, settings, data and "
                          "code are unchanged since an earlier run into OUT (pipeline.cache=false)")

    report = commands.add_parser(
        "report", help="write one self-contained HTML page about a run: data statistics, "
                       "training curves, the release gate, attention, sample answers")
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (`mmfuse run --out`)")
    report.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")

    config = commands.add_parser("config", help="the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective configuration as YAML")
    _add_config_arguments(show)
    show.add_argument("--reference", action="store_true",
                      help="print every setting with its default and meaning (Markdown)")

    conv = commands.add_parser("convert", help="write a dataset directory from a public data set")
    conv.add_argument("name", choices=CONVERTERS)
    conv.add_argument("src")
    conv.add_argument("dst")

    sample = commands.add_parser("sample", help="write the embedded sample dataset")
    sample.add_argument("dst")
    sample.add_argument("--seed", type=int, default=0)

    synthetic = commands.add_parser(
        "synthetic", help="write a synthetic catalogue of any size (titles, attributes, photos, "
                          "interactions around latent clusters), for cost benchmarks")
    synthetic.add_argument("dst")
    synthetic.add_argument("--items", type=int, required=True)
    synthetic.add_argument("--users", type=int, default=None,
                           help="default: half the number of items")
    synthetic.add_argument("--seed", type=int, default=0)

    predict = commands.add_parser(
        "predict", help="ask the newest pushed SavedModel directly (no server)")
    predict.add_argument("--model-base", required=True, help="TF Serving model base directory")
    _add_question_arguments(predict)

    evaluate = commands.add_parser(
        "evaluate", help="offline metrics of a pushed model on a dataset's eval split")
    evaluate.add_argument("--data", required=True, help="dataset directory")
    evaluate.add_argument("--model", required=True,
                          help="pushed model: a version directory or the model base above it")
    evaluate.add_argument("--split", choices=SPLIT_METHODS, default="random")
    evaluate.add_argument("--k", type=_cutoffs, default=DEFAULT_KS,
                          help="comma-separated cut-offs (default 10,20,100)")
    evaluate.add_argument("--exclude-seen", action="store_true",
                          help="leave each user's train items out of their recommendations")
    _add_user_key_argument(evaluate)

    serve = commands.add_parser(
        "serve", help="serve the pushed models over TF Serving's gRPC and REST APIs (a local "
                      "stand-in for tensorflow_model_server)")
    serve.add_argument("--model-base", required=True,
                       help="TF Serving model base directory (<base>/<version>/saved_model.pb)")
    _add_config_arguments(serve)
    serve.add_argument("--port", help="serving.port (default 8500)")
    serve.add_argument("--rest-port", help="serving.rest_port: also answer TF Serving's REST API "
                                           "there (default: no REST API)")
    serve.add_argument("--host", help="serving.host: address to listen on (default: this "
                                      "machine only)")
    serve.add_argument("--model-name", help="model name requests use (default: the base "
                                            "directory's name)")
    serve.add_argument("--poll-seconds", help="serving.poll_seconds")
    serve.add_argument("--max-request-bytes", help="serving.max_request_bytes")
    serve.add_argument("--batching-parameters-file", help="serving.batching_parameters_file")
    serve.add_argument("--tensorflow-intra-op-parallelism", help="serving.intra_op_threads")
    serve.add_argument("--tensorflow-inter-op-parallelism", help="serving.inter_op_threads")
    serve.add_argument("--tls-cert", help="serving.tls_cert: PEM certificate chain; serves TLS")
    serve.add_argument("--tls-key", help="serving.tls_key: PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="serving.tls_client_ca: PEM CA that client "
                                               "certificates must be signed by (mutual TLS)")

    query = commands.add_parser("query", help="ask a TF Serving gRPC server one question")
    _add_server_arguments(query)
    _add_question_arguments(query)

    demo = commands.add_parser(
        "demo", help="a web page that asks a TF Serving gRPC server: search, photo search, "
                     "users' recommendations beside their history, similar items")
    _add_server_arguments(demo)
    demo.add_argument("--data", required=True,
                      help="the dataset directory the model was trained on (photos, titles, "
                           "users' histories)")
    demo.add_argument("--port", type=_at_least(0), default=8080,
                      help="port of the page (default %(default)s; 0 picks a free one)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default %(default)s: this machine only)")
    demo.add_argument("--k", type=_at_least(1), default=12, help="items per answer")
    _add_user_key_argument(demo)

    pseudonym = commands.add_parser(
        "pseudonym", help="print the pseudonym the model knows each user by, for clients that "
                          "hash no ids themselves (curl, other languages)")
    pseudonym.add_argument("users", nargs="+", metavar="USER")
    _add_user_key_argument(pseudonym)

    catalog = commands.add_parser(
        "catalog", help="add or remove products in the pushed model without retraining")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    add = catalog_commands.add_parser(
        "add", help="embed an items.csv's products and write them as a new version")
    add.add_argument("--model-base", required=True, help="TF Serving model base directory")
    add.add_argument("--items", required=True, metavar="FILE.csv",
                     help="items in the dataset contract's items.csv form (image paths "
                          "relative to the file)")
    remove = catalog_commands.add_parser(
        "remove", help="take products out, as a new version")
    remove.add_argument("--model-base", required=True, help="TF Serving model base directory")
    remove.add_argument("item_ids", nargs="+", metavar="ID")

    kubeflow = commands.add_parser("kubeflow", help="Kubeflow Pipelines v2")
    kubeflow_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)
    compile_ = kubeflow_commands.add_parser("compile", help="compile the pipeline spec JSON")
    compile_.add_argument("--out", required=True, help="pipeline spec file to write (.json "
                                                       "for Vertex AI, .yaml for Kubeflow)")
    _add_config_arguments(compile_)
    compile_.add_argument("--data", help="kubeflow.data: the dataset directory as the pods see it")
    compile_.add_argument("--pipeline-root", help="kubeflow.pipeline_root")
    compile_.add_argument("--serving-dir", help="kubeflow.serving_dir")
    compile_.add_argument("--image", help="kubeflow.image")
    return parser


def _run(args) -> int:
    if args.no_cache:
        args.overrides.append("pipeline.cache=false")
    settings = _settings(args, "run")
    out = os.path.abspath(args.out)
    data_dir = args.data
    if data_dir is None:
        data_dir = os.path.join(out, "sample-data")
        write_sample_dataset(data_dir)
    # Validate before importing TFX: bad input fails at once, as a message.
    dataset = validate_for_run(data_dir, settings)
    key_file = os.path.abspath(os.path.expanduser(settings.pipeline.user_key_file))
    # Absolute, as ExampleGen's Beam workers may not share this directory.
    settings = dataclasses.replace(settings, pipeline=dataclasses.replace(
        settings.pipeline, user_key_file=key_file))
    user_key = pseudonyms.load_key(key_file, create=True)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, LOG_FILE)
    started = time.time()
    try:
        with progress.logging_to(log_path, verbose=args.verbose) as terminal, \
                progress.install(progress.Progress(terminal)) as shown:
            shown.line(f"log: {log_path}" + ("" if args.verbose else " (--verbose shows it here)"))
            result = _run_pipeline(args, settings, out, data_dir, dataset, user_key, shown)
            if args.report:
                from evaluation.report import write_report

                shown.line(f"report: {write_report(out)}")
            else:
                shown.line(f"report: mmfuse report {out}")
    except (DatasetError, ConfigError):
        raise
    except BaseException:
        print(f"mmfuse run: failed; the whole log is {log_path}", file=sys.stderr)
        raise
    print(json.dumps({
        "blessed": result.blessed,
        "candidate_model": result.candidate_model,
        "pushed_model": result.pushed_model,
        "blessing": result.blessing_reason,
        "metrics": result.metrics,
        "change_vs_baseline": result.change_vs_baseline,
        "feature_cache": getattr(result, "feature_cache", None),
        "warm_start": getattr(result, "warm_start", None),
        "wall_time_s": round(time.time() - started, 1),
        "config_hash": config_hash(settings),
        "config": to_dict(settings),
    }), flush=True)
    return 0 if result.blessed else 3


def _run_pipeline(args, settings, out: str, data_dir: str, dataset, user_key: bytes,
                  shown: progress.Progress):
    """Runs the pipeline on the checked dataset (output redirected by `_run`)."""
    from pipeline import local_runner
    from pipeline.fingerprint import DATA_CODE, TRAINER_CODE, code_fingerprint, dataset_fingerprint
    from pipeline.pipeline import MODEL_NAME, PipelineConfig

    if args.data is None:
        shown.line(f"wrote the embedded sample dataset to {data_dir}")
    shown.line(dataset.summary())
    config = PipelineConfig(
        data_dir=os.path.abspath(data_dir),
        pipeline_root=os.path.join(out, "pipeline"),
        serving_dir=os.path.join(out, "serving", MODEL_NAME),
        settings=settings,
        metadata_path=os.path.join(out, "metadata.sqlite"),
        beam_pipeline_args=tuple(settings.pipeline.beam_args),
        enable_cache=settings.pipeline.cache,
        cache_key=(f"data={dataset_fingerprint(data_dir)} code={code_fingerprint(DATA_CODE)} "
                   f"user_key={pseudonyms.key_fingerprint(user_key)}"),
        trainer_cache_key=code_fingerprint(TRAINER_CODE))
    local_runner.plan_progress(dataset, settings.pipeline.split)
    return local_runner.run(config)


def _config_show(args) -> int:
    if args.reference:
        print(reference(), end="")
        return 0
    print(to_yaml(_settings(args, "config")), end="")
    return 0


def _question(args):
    """The signature and inputs `args` ask for (the user as its pseudonym);
    ValueError (or UserKeyError) saying what is wrong with them."""
    image = None
    if args.image is not None:
        try:
            with open(args.image, "rb") as handle:
                image = handle.read()
        except OSError as error:
            raise ValueError(f"cannot read image {args.image}: {error.strerror}") from None
    from serving import client

    asked = dict(user=args.user, text=args.text, image=image, item=args.item, recent=args.recent)
    client.question(**asked)  # a malformed question is told before a missing key
    # An anonymous visitor (--user "") is sent as is: no key is needed.
    user_key = pseudonyms.load_key(args.user_key_file) if args.user else None
    return client.question(**asked, user_key=user_key)


def _show(args, answer, source: str) -> None:
    from serving import client

    if args.json:
        print(client.as_json(answer))
        return
    asked = client.subject(answer.signature, user=args.user, text=args.text, image=args.image,
                           item=args.item, recent=args.recent)
    print("\n".join(client.show(answer, asked, source, args.user)))


def _predict(args) -> int:
    try:
        signature, inputs = _question(args)
    except ValueError as error:
        print(f"mmfuse predict: error: {error}", file=sys.stderr)
        return 2
    import tensorflow as tf

    from serving import client, model_store
    from serving.server import graph_error_text

    try:
        version, model = model_store.load_newest(args.model_base)
    except (OSError, ValueError, tf.errors.OpError) as error:  # no base, no version, bad files
        print(f"mmfuse predict: error: {graph_error_text(error)}", file=sys.stderr)
        return 2
    try:
        answer = client.ask_saved_model(model, version, signature, inputs, args.k)
    except tf.errors.OpError as error:  # as the server answers it: code and message
        from tensorflow.core.protobuf.error_codes_pb2 import Code

        print(f"mmfuse predict: {Code.Name(error.error_code)}: {graph_error_text(error)}",
              file=sys.stderr)
        return 1
    _show(args, answer, f"model {os.path.basename(os.path.normpath(args.model_base))}")
    return 0


def _report(args) -> int:
    from evaluation.report import RunDirError, write_report

    logging.getLogger("absl").setLevel(logging.ERROR)  # TFMA's notes on the models it looked for
    try:
        print(f"wrote {write_report(args.run_dir, args.out)}")
    except RunDirError as error:
        print(f"mmfuse report: error: {error}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args) -> int:
    from evaluation.evaluate import evaluate_model

    try:
        result = evaluate_model(args.data, args.model, args.split, args.k, args.exclude_seen,
                                user_key_file=args.user_key_file)
    except FileNotFoundError as error:  # no model at --model
        print(f"mmfuse evaluate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


def _serve(args) -> int:
    from serving.server import serve

    settings = _settings(args, "serve").serving
    try:
        serve(args.model_base, settings, model_name=args.model_name)
    except (OSError, ValueError) as error:  # no model base, port taken, bad batching or TLS file
        print(f"mmfuse serve: error: {error}", file=sys.stderr)
        return 2
    return 0


def _query(args) -> int:
    import grpc

    from serving import client

    try:
        signature, inputs = _question(args)
        credentials = _credentials(args)
    except ValueError as error:
        print(f"mmfuse query: error: {error}", file=sys.stderr)
        return 2
    request = client.predict_request(signature, inputs, args.k, args.model_name)
    try:
        with client.connect(args.server, args.timeout, credentials) as channel:
            answer = client.ask(channel, request, args.timeout)
    except ConnectionError as error:
        print(f"mmfuse query: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"mmfuse query: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    _show(args, answer, f"model {args.model_name}")
    return 0


def _demo(args) -> int:
    """Serves the demo page until interrupted: exit 2 on bad input (dataset,
    key, TLS files, a port taken), 1 when no model server answers."""
    from demo import app as demo_app

    try:
        credentials = _credentials(args)
    except ValueError as error:
        print(f"mmfuse demo: error: {error}", file=sys.stderr)
        return 2
    catalogue = demo_app.read_catalogue(args.data)
    # Only a dataset with users needs the key (a catalogue-only one has none to ask about).
    user_key = pseudonyms.load_key(args.user_key_file) if catalogue.histories else None
    model = demo_app.Model(args.server, model_name=args.model_name, k=args.k,
                           timeout=args.timeout, credentials=credentials, user_key=user_key)
    try:
        model.channel()
    except ConnectionError as error:
        print(f"mmfuse demo: {error}", file=sys.stderr)
        return 1
    try:
        demo_app.serve(demo_app.create_app(catalogue, model), args.host, args.port,
                       announce=lambda line: print(f"{line} (asking {args.server})", flush=True))
    except OSError as error:  # the port taken, a bad host
        print(f"mmfuse demo: error: {error}", file=sys.stderr)
        return 2
    return 0


def _catalog(args) -> int:
    from serving import catalog

    try:
        if args.catalog_command == "add":
            result = catalog.add_items(args.model_base, args.items)
        else:
            result = catalog.remove_items(args.model_base, args.item_ids)
    except (ValueError, OSError) as error:  # CatalogError, a manifest mismatch, no model base
        print(f"mmfuse catalog {args.catalog_command}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def _kubeflow_compile(args) -> int:
    settings = _settings(args, "compile")
    from pipeline.kubeflow_runner import compile_pipeline

    path = compile_pipeline(args.out, settings)
    print(f"wrote {path}")
    return 0


def _quiet_libraries(command: str) -> None:
    """Before TensorFlow is imported: its logs (native and Python) hold
    warnings and errors for `mmfuse run`'s log file and only errors elsewhere
    (no CUDA registration errors on machines without a GPU, no deprecation
    notices); a user's own TF_CPP_MIN_LOG_LEVEL wins. Libraries' FutureWarnings
    (google-cloud on Python 3.10, ...) speak to their developers, not to the
    person running mmfuse."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if command == "run" else "3")
    if command != "run":
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _convert(args) -> int:
    try:
        print(json.dumps(convert(args.name, args.src, args.dst)))
    except (ValueError, FileNotFoundError) as error:
        raise DatasetError(str(error)) from None
    return 0


def _sample(args) -> int:
    print(json.dumps(write_sample_dataset(args.dst, seed=args.seed)))
    return 0


def _synthetic(args) -> int:
    try:
        summary = write_synthetic_dataset(args.dst, args.items, seed=args.seed,
                                          num_users=args.users)
    except ValueError as error:
        raise DatasetError(str(error)) from None
    print(json.dumps(summary))
    return 0


def _pseudonym(args) -> int:
    key = pseudonyms.load_key(args.user_key_file)
    print("\n".join(pseudonyms.pseudonym(user, key) for user in args.users))
    return 0


COMMANDS = {"run": _run, "convert": _convert, "config": _config_show, "sample": _sample,
            "synthetic": _synthetic,
            "predict": _predict, "evaluate": _evaluate, "report": _report, "serve": _serve,
            "query": _query, "demo": _demo, "catalog": _catalog, "pseudonym": _pseudonym,
            "kubeflow": _kubeflow_compile}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries(args.command)
    try:
        return COMMANDS[args.command](args)
    except (DatasetError, ConfigError, pseudonyms.UserKeyError) as error:
        print(f"mmfuse {args.command}: error: {error}", file=sys.stderr)
        return 2


def console_main() -> None:
    """The installed `mmfuse` command. Exits without running interpreter
    teardown, where TensorFlow 2.16 prints spurious TypeErrors from
    AtomicFunction.__del__ after the work is done and its output written."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
