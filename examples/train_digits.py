"""Train a zoo backbone on scikit-learn's handwritten digits with deploy-attn's API, for
`deploy-attn accuracy` (the digits ship inside scikit-learn: nothing is downloaded).

    python3 examples/train_digits.py mobilenetv2_ca work     # classifier, 3 epochs
    python3 examples/train_digits.py unet_cbam work          # segmentation, 10 epochs

writes work/digits/{train,test}/<digit>/*.png (ImageFolder), work/digits/seg-{train,test}/
{images,masks}/*.png (mask: 0 background, 1 + the digit on its strokes) and the trained
state_dict work/NAME.pt, then prints the export and accuracy commands to run.
"""
import argparse
from pathlib import Path

import torch

import deploy_attn
from deploy_attn.commands.labelled import dataset_arrays, load_dataset
from deploy_attn.datasets import TrainConfig, digits, train
from deploy_attn.sources import default_preprocess

SIZE = (32, 32)
RECIPES = {  # name: (segmentation?, training)
    "mobilenetv2_ca": (False, TrainConfig(epochs=3, lr=0.05)),
    "resnet50_se": (False, TrainConfig(epochs=3, lr=0.05)),
    "unet_cbam": (True, TrainConfig(epochs=10, lr=3e-3, optimizer="adamw")),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(RECIPES))
    p.add_argument("work", type=Path)
    args = p.parse_args()
    segment, recipe = RECIPES[args.model]
    pre = default_preprocess("backbone", (1, 1, *SIZE))
    data = args.work / "digits"
    if not (data / "test").is_dir():
        digits(data, pre)
    classes = 11 if segment else 10
    train_dir = data / ("seg-train" if segment else "train")
    dataset = load_dataset(train_dir, "segmentation" if segment else "classifier", classes)
    x, y = dataset_arrays(dataset, pre)
    model = deploy_attn.create_model(args.model, channels=1, input_size=SIZE,
                                     num_classes=classes)
    torch.set_num_threads(1)  # small convolutions: faster and reproducible on one thread
    train(model, x, y, recipe)
    weights = args.work / f"{args.model}.pt"
    torch.save(model.state_dict(), weights)
    out = Path("export") / f"digits-{args.model}"
    calib = train_dir / "images" if segment else train_dir
    test = data / ("seg-test" if segment else "test")
    print(f"wrote {weights}; now:\n"
          f"  deploy-attn export {args.model} --channels 1 --input-size 32 32 --num-classes "
          f"{classes} --weights {weights} --precision fp16,int8-fp32,int8 --calib-dir {calib} "
          f"--calib-count 128 -o {out}\n"
          f"  deploy-attn accuracy {out} --dataset {test}")


if __name__ == "__main__":
    main()
