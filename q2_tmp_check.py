import numpy as np, torch, sys
from skflow_ad import UFlowDetector
print(torch.get_num_threads())
rng = np.random.RandomState(0); X = (rng.rand(12, 32, 32) * 255).astype(np.uint8)
for norm in sys.argv[1:]:
    d = UFlowDetector(backbone="resnet18", pretrained=False, image_size=32, max_epochs=2, batch_size=8, random_state=0, feature_normalization=norm).fit(X)
    features = d.extract_features(X)
    flow = d.build_flow(); d.make_trainer().fit(flow, features)
    worst = max((flow.state_dict()[k] - v).abs().max().item() for k, v in d.flow_.state_dict().items())
    nbad = sum((flow.state_dict()[k] != v).sum().item() for k, v in d.flow_.state_dict().items())
    print(norm, worst, nbad, d.loss_curve_)
