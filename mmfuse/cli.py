"""The `mmfuse` command line: one subcommand per job, each delegating to the
package that owns it (pipeline/, serving/). Heavy imports happen inside the
subcommands so that `mmfuse --help` and input errors answer at once."""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter hides the progress lines a person reads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.converters import convert  # noqa: E402
from pipeline.dataset import DatasetError, read_dataset  # noqa: E402
from pipeline.sample_data import write_sample_dataset  # noqa: E402
from pipeline.splits import SPLIT_METHODS  # noqa: E402
from trainer.ranking import DEFAULT_KS  # noqa: E402

CONVERTERS = ("movielens-100k", "fashion-small", "home-depot")
MODALITIES = ("id", "text", "image")
GATE_K = 100


def _modalities(text: str):
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = set(chosen) - set(MODALITIES)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"--modalities takes a comma-separated subset of {','.join(MODALITIES)}, not {text!r}")
    return tuple(chosen)


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


def _cutoffs(text: str):
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(
            f"--k takes comma-separated positive whole numbers, not {text!r}")
    return ks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfuse", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on a dataset directory")
    run.add_argument("--data", help="dataset directory (default: generate the embedded sample "
                                    "into OUT/sample-data)")
    run.add_argument("--out", required=True, help="run directory (pipeline outputs, serving/)")
    run.add_argument("--modalities", type=_modalities, default=MODALITIES)
    run.add_argument("--split", choices=SPLIT_METHODS, default="random")
    run.add_argument("--epochs", type=_at_least(0), default=5,
                     help="training epochs (0 exports the untrained model)")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--rating-weight", type=_at_least(0, float, "a number"), default=0.0,
                     help="also train a head predicting each interaction's rating, its loss "
                          "weighted by this beside the retrieval loss (default 0: no head); "
                          "needs interactions with a rating")
    run.add_argument("--no-cache", action="store_true",
                     help="run every component, even those whose inputs, options, data and "
                          "code are unchanged since an earlier run into OUT")
    run.add_argument("--min-recall", type=float, default=None,
                     help=f"release floor on recall@{GATE_K} (default: twice what ranking at "
                          "random would reach, at most 0.5)")

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
    evaluate.add_argument("--split", choices=SPLIT_METHODS, default="random")
    evaluate.add_argument("--k", type=_cutoffs, default=DEFAULT_KS,
                          help="comma-separated cut-offs (default 10,20,100)")
    evaluate.add_argument("--exclude-seen", action="store_true",
                          help="leave each user's train items out of their recommendations")

    serve = commands.add_parser(
        "serve", help="serve the pushed models over TF Serving's gRPC API (a local stand-in "
                      "for tensorflow_model_server)")
    serve.add_argument("--model-base", required=True,
                       help="TF Serving model base directory (<base>/<version>/saved_model.pb)")
    serve.add_argument("--port", type=int, default=8500)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: this machine only)")
    serve.add_argument("--model-name", help="model name requests use (default: the base "
                                            "directory's name)")
    serve.add_argument("--poll-seconds", type=float, default=2.0,
                       help="how often to look for a new version")
    serve.add_argument("--max-request-bytes", type=int, default=16 << 20,
                       help="larger requests are refused (RESOURCE_EXHAUSTED)")
    serve.add_argument("--batching-parameters-file",
                       help="TF Serving BatchingParameters text proto (default: "
                            "serving/deploy/batching.config)")
    serve.add_argument("--tensorflow-intra-op-parallelism", type=_at_least(0), default=0,
                       help="threads one op may use (default 0: one per core)")
    serve.add_argument("--tensorflow-inter-op-parallelism", type=_at_least(0), default=0,
                       help="threads running a batch's ops (default 0: the batch thread itself)")

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
    compile_.add_argument("--out", required=True, help="pipeline spec file to write")
    compile_.add_argument("--data", required=True, help="dataset directory as the pipeline pods see it (gs://... or a mounted path)")
    compile_.add_argument("--pipeline-root", required=True)
    compile_.add_argument("--serving-dir", required=True)
    compile_.add_argument("--image", default="mmfuse-pipeline:latest")
    return parser


def _run(args) -> int:
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
    if args.rating_weight > 0 and all(row.rating is None for row in dataset.interactions):
        raise DatasetError(f"--rating-weight needs interactions with a rating, and {data_dir} has none")
    min_recall = args.min_recall
    if min_recall is None:
        min_recall = min(0.5, 2.0 * GATE_K / len(dataset.items))
    config = PipelineConfig(
        data_dir=os.path.abspath(data_dir),
        pipeline_root=os.path.join(out, "pipeline"),
        serving_dir=os.path.join(out, "serving", MODEL_NAME),
        metadata_path=os.path.join(out, "metadata.sqlite"),
        split=args.split, modalities=args.modalities, epochs=args.epochs, seed=args.seed,
        rating_weight=args.rating_weight,
        min_recall=min_recall, enable_cache=not args.no_cache,
        cache_key=f"data={dataset_fingerprint(data_dir)} code={code_fingerprint(DATA_CODE)}",
        trainer_cache_key=code_fingerprint(TRAINER_CODE))
    started = time.time()
    result = local_runner.run(config)
    print(json.dumps({
        "blessed": result.blessed,
        "candidate_model": result.candidate_model,
        "pushed_model": result.pushed_model,
        "blessing": result.blessing_reason,
        "min_recall@100": round(min_recall, 6),
        "metrics": result.metrics,
        "change_vs_baseline": result.change_vs_baseline,
        "wall_time_s": round(time.time() - started, 1),
    }), flush=True)
    return 0 if result.blessed else 3


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

    try:
        serve(args.model_base, port=args.port, host=args.host, model_name=args.model_name,
              poll_seconds=args.poll_seconds, max_request_bytes=args.max_request_bytes,
              batching_parameters_file=args.batching_parameters_file or DEFAULT_PARAMETERS_FILE,
              intra_op_threads=args.tensorflow_intra_op_parallelism,
              inter_op_threads=args.tensorflow_inter_op_parallelism)
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
    from pipeline.kubeflow_runner import compile_pipeline

    path = compile_pipeline(args.out, args.data, args.pipeline_root, args.serving_dir, args.image)
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
    except DatasetError as error:
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
