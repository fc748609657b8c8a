"""minicap: image captioning from scratch in NumPy.

The package follows the data flow of a captioner, one module per stage:

    data      COCO captions -> tokens -> Vocabulary -> padded int arrays; splits by image id
    encoders  pretrained CNN weights (.pth, read without torch) -> ONNX graph
    features  JPEG -> ONNX Runtime -> one feature vector per image, stored once (safe pickle)
    nn        hand-written layers: forward/backward pairs (affine, embedding, RNN, LSTM, softmax loss)
    model     CaptionModel: parameters, loss and gradients composed from nn
    optim     SGD, momentum, Adam, schedules, global-norm gradient clipping
    train     the training loop: minibatches, clipping, Adam, validation, checkpoints
    decode    greedy, temperature sampling, beam search
    evaluate  BLEU, METEOR, ROUGE-L, CIDEr; baselines; k-fold cross-validation
"""

__version__ = "0.1.0"
