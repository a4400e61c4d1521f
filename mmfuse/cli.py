"""The `mmfuse` command line: one subcommand per job, each delegating to the
package that owns it (pipeline/, serving/). Heavy imports happen inside the
subcommands so that `mmfuse --help` and input errors answer at once."""
import argparse
import json
import os
import sys
import time

from dataset.contract import DatasetError, read_dataset
from dataset.converters import convert
from dataset.sample import write_sample_dataset
from evaluation.metrics import DEFAULT_KS
from mmfuse.config import ConfigError, config_hash, load_config, reference, to_dict, to_yaml

# TensorFlow's C++ start-up chatter hides the progress lines a person reads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONVERTERS = ("movielens-100k", "fashion-small", "home-depot")

# Flags that are shorthands for configuration keys, by command.
SHORTHANDS = {
    "run": {"modalities": "trainer.modalities", "split": "pipeline.split", "epochs": "trainer.epochs",
            "seed": "trainer.seed", "rating_weight": "trainer.rating_weight",
            "min_recall": "gate.min_recall"},
    "compile": {"image": "kubeflow.image", "data": "kubeflow.data",
                "pipeline_root": "kubeflow.pipeline_root", "serving_dir": "kubeflow.serving_dir"},
    "serve": {"port": "serving.port", "host": "serving.host", "poll_seconds": "serving.poll_seconds",
              "max_request_bytes": "serving.max_request_bytes",
              "batching_parameters_file": "serving.batching_parameters_file",
              "tensorflow_intra_op_parallelism": "serving.intra_op_threads",
              "tensorflow_inter_op_parallelism": "serving.inter_op_threads"},
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfuse", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on a dataset directory")
    run.add_argument("--data", help="dataset directory (default: generate the embedded sample "
                                    "into OUT/sample-data)")
    run.add_argument("--out", required=True, help="run directory (pipeline outputs, serving/)")
    _add_config_arguments(run)
    run.add_argument("--modalities", help="trainer.modalities, comma-separated: id,text,image")
    run.add_argument("--split", help="pipeline.split: random or temporal")
    run.add_argument("--epochs", help="trainer.epochs (0 exports the untrained model)")
    run.add_argument("--seed", help="trainer.seed")
    run.add_argument("--rating-weight", help="trainer.rating_weight: also train a head "
                                             "predicting ratings, its loss weighted by this")
    run.add_argument("--min-recall", help="gate.min_recall: the release floor on recall@k")
    run.add_argument("--no-cache", action="store_true",
                     help="run every component, even those whose inputs, settings, data and "
                          "code are unchanged since an earlier run into OUT (pipeline.cache=false)")

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

    predict = commands.add_parser(
        "predict", help="ask the newest pushed SavedModel directly (no server)")
    predict.add_argument("--model-base", required=True, help="TF Serving model base directory")
    predict.add_argument("--user", required=True)
    predict.add_argument("--k", type=int, default=10)

    evaluate = commands.add_parser(
        "evaluate", help="offline metrics of a pushed model on a dataset's eval split")
    evaluate.add_argument("--data", required=True, help="dataset directory")
    evaluate.add_argument("--model", required=True,
                          help="pushed model: a version directory or the model base above it")
    evaluate.add_argument("--split", choices=("random", "temporal"), default="random")
    evaluate.add_argument("--k", type=_cutoffs, default=DEFAULT_KS,
                          help="comma-separated cut-offs (default 10,20,100)")
    evaluate.add_argument("--exclude-seen", action="store_true",
                          help="leave each user's train items out of their recommendations")

    serve = commands.add_parser(
        "serve", help="serve the pushed models over TF Serving's gRPC API (a local stand-in "
                      "for tensorflow_model_server)")
    serve.add_argument("--model-base", required=True,
                       help="TF Serving model base directory (<base>/<version>/saved_model.pb)")
    _add_config_arguments(serve)
    serve.add_argument("--port", help="serving.port (default 8500)")
    serve.add_argument("--host", help="serving.host: address to listen on (default: this "
                                      "machine only)")
    serve.add_argument("--model-name", help="model name requests use (default: the base "
                                            "directory's name)")
    serve.add_argument("--poll-seconds", help="serving.poll_seconds")
    serve.add_argument("--max-request-bytes", help="serving.max_request_bytes")
    serve.add_argument("--batching-parameters-file", help="serving.batching_parameters_file")
    serve.add_argument("--tensorflow-intra-op-parallelism", help="serving.intra_op_threads")
    serve.add_argument("--tensorflow-inter-op-parallelism", help="serving.inter_op_threads")

    query = commands.add_parser("query", help="ask a TF Serving gRPC server one question")
    query.add_argument("--server", required=True, help="HOST:PORT")
    query.add_argument("--user", help="recommend for this user, or personalise --text")
    asked = query.add_mutually_exclusive_group()
    asked.add_argument("--text", help="search by text")
    asked.add_argument("--image", help="search by an image file (JPEG or PNG)")
    asked.add_argument("--item", help="items similar to this item")
    query.add_argument("--k", type=_at_least(1), default=10)
    query.add_argument("--json", action="store_true", help="print one JSON line")
    query.add_argument("--model-name", default="mmfuse")
    query.add_argument("--timeout", type=float, default=10.0, help="seconds")

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
    from pipeline import local_runner
    from pipeline.fingerprint import DATA_CODE, TRAINER_CODE, code_fingerprint, dataset_fingerprint
    from pipeline.pipeline import MODEL_NAME, PipelineConfig

    local_runner.show_progress()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data_dir = args.data
    if data_dir is None:
        data_dir = os.path.join(out, "sample-data")
        write_sample_dataset(data_dir)
        local_runner.progress_log.info("wrote the embedded sample dataset to %s", data_dir)
    # Validate before starting TFX, so bad input is a message, not a Beam trace.
    dataset = read_dataset(data_dir)
    local_runner.progress_log.info(dataset.summary())
    if settings.trainer.rating_weight > 0 and all(row.rating is None for row in dataset.interactions):
        raise DatasetError(f"trainer.rating_weight needs interactions with a rating, and {data_dir} "
                           "has none")
    config = PipelineConfig(
        data_dir=os.path.abspath(data_dir),
        pipeline_root=os.path.join(out, "pipeline"),
        serving_dir=os.path.join(out, "serving", MODEL_NAME),
        settings=settings,
        metadata_path=os.path.join(out, "metadata.sqlite"),
        beam_pipeline_args=tuple(settings.pipeline.beam_args),
        enable_cache=settings.pipeline.cache,
        cache_key=f"data={dataset_fingerprint(data_dir)} code={code_fingerprint(DATA_CODE)}",
        trainer_cache_key=code_fingerprint(TRAINER_CODE))
    started = time.time()
    result = local_runner.run(config)
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


def _config_show(args) -> int:
    if args.reference:
        print(reference(), end="")
        return 0
    print(to_yaml(_settings(args, "config")), end="")
    return 0


def _predict(args) -> int:
    from serving.model_store import load_newest

    version, model = load_newest(args.model_base)
    import tensorflow as tf

    answer = model.signatures["recommend"](user_id=tf.constant([args.user]), k=tf.constant(args.k))
    print(f"top {args.k} items for user {args.user} (model version {version}):")
    for item_id, score in zip(answer["item_ids"].numpy()[0], answer["scores"].numpy()[0]):
        print(f"  {item_id.decode()}  {score:.4f}")
    return 0


def _evaluate(args) -> int:
    from evaluation.evaluate import evaluate_model

    try:
        result = evaluate_model(args.data, args.model, args.split, args.k, args.exclude_seen)
    except FileNotFoundError as error:  # no model at --model
        print(f"mmfuse evaluate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


def _serve(args) -> int:
    from serving.batching import DEFAULT_PARAMETERS_FILE
    from serving.server import serve

    settings = _settings(args, "serve").serving
    try:
        serve(args.model_base, port=settings.port, host=settings.host, model_name=args.model_name,
              poll_seconds=settings.poll_seconds, max_request_bytes=settings.max_request_bytes,
              batching_parameters_file=settings.batching_parameters_file or DEFAULT_PARAMETERS_FILE,
              intra_op_threads=settings.intra_op_threads,
              inter_op_threads=settings.inter_op_threads)
    except (OSError, ValueError) as error:  # no model base, port taken, bad batching file
        print(f"mmfuse serve: error: {error}", file=sys.stderr)
        return 2
    return 0


def _query(args) -> int:
    import grpc

    from serving import client

    try:
        image = None
        if args.image is not None:
            try:
                with open(args.image, "rb") as handle:
                    image = handle.read()
            except OSError as error:
                raise ValueError(f"cannot read image {args.image}: {error.strerror}") from None
        signature, inputs = client.question(user=args.user, text=args.text, image=image,
                                            item=args.item)
    except ValueError as error:
        print(f"mmfuse query: error: {error}", file=sys.stderr)
        return 2
    request = client.predict_request(signature, inputs, args.k, args.model_name)
    try:
        with client.connect(args.server, args.timeout) as channel:
            answer = client.ask(channel, request, args.timeout)
    except ConnectionError as error:
        print(f"mmfuse query: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"mmfuse query: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"signature": answer.signature, "model_version": answer.model_version,
                          "item_ids": answer.item_ids[0], "scores": answer.scores[0]}))
        return 0
    subject = {"recommend": f"user {args.user}", "search": f"{args.text!r}",
               "image_search": f"image {args.image}", "similar_items": f"item {args.item}"}
    personal = f" for user {args.user}" if signature == "search" and args.user else ""
    print(f"{signature} {subject[signature]}{personal} (model {args.model_name} version "
          f"{answer.model_version}):")
    for rank, (item_id, score) in enumerate(zip(answer.item_ids[0], answer.scores[0]), start=1):
        print(f"  {rank:2d}. {item_id}  {score:.4f}")
    return 0


def _kubeflow_compile(args) -> int:
    settings = _settings(args, "compile")
    from pipeline.kubeflow_runner import compile_pipeline

    path = compile_pipeline(args.out, settings)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "convert":
            try:
                print(json.dumps(convert(args.name, args.src, args.dst)))
            except (ValueError, FileNotFoundError) as error:
                raise DatasetError(str(error)) from None
            return 0
        if args.command == "config":
            return _config_show(args)
        if args.command == "sample":
            print(json.dumps(write_sample_dataset(args.dst, seed=args.seed)))
            return 0
        if args.command == "predict":
            return _predict(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "query":
            return _query(args)
        return _kubeflow_compile(args)
    except (DatasetError, ConfigError) as error:
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
