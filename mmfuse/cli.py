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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfuse", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on a dataset directory")
    run.add_argument("--data", help="dataset directory (default: generate the embedded sample "
                                    "into OUT/sample-data)")
    run.add_argument("--out", required=True, help="run directory (pipeline outputs, serving/)")
    run.add_argument("--modalities", type=_modalities, default=MODALITIES)
    run.add_argument("--split", choices=SPLIT_METHODS, default="random")
    run.add_argument("--epochs", type=int, default=5)
    run.add_argument("--seed", type=int, default=42)
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
    min_recall = args.min_recall
    if min_recall is None:
        min_recall = min(0.5, 2.0 * GATE_K / len(dataset.items))
    config = PipelineConfig(
        data_dir=os.path.abspath(data_dir),
        pipeline_root=os.path.join(out, "pipeline"),
        serving_dir=os.path.join(out, "serving", MODEL_NAME),
        metadata_path=os.path.join(out, "metadata.sqlite"),
        split=args.split, modalities=args.modalities, epochs=args.epochs, seed=args.seed,
        min_recall=min_recall)
    started = time.time()
    result = local_runner.run(config)
    print(json.dumps({
        "blessed": result.blessed,
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
