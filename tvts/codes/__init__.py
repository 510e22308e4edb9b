"""Compact codes on frozen features (docs/codes.md): binary hashing and product quantisation learned on top of the
features tvts.extract writes, for retrieval over large collections.

    python -m tvts.codes.train --method {conmh,mecoq,hcq,phpq,lsh,itq,pq,opq} --bits {16,32,64,128}
        --features TRAIN.npz --out CODES_DIR
    python -m tvts.codes.evaluate --codes CODES_DIR --queries QUERY.npz --database DB.npz --out RESULTS_DIR
    python -m tvts.codes.sweep --out DIR                  # every method x bits on the synthetic features

features.py   the feature-file format and its checks        metrics.py  Hamming, ADC, mAP@K, P@K, R@K
coder.py      a trained coder, its directory, the Method interface
baselines.py  LSH, ITQ, PQ, OPQ                             nn.py       the JAX pieces the learned methods share
conmh.py mecoq.py hcq.py phpq.py                            the learned methods (JAX / Flax / optax)
synthetic.py  feature files with planted class structure   demo_features.py  features of an exported backbone
train.py evaluate.py sweep.py report.py                      the programs and their outputs
"""
