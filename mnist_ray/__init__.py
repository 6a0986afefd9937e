"""mnist-ray: the classic MNIST softmax regression as a distributed batch job on Ray.

mnist-ray submit train            # 15 epochs on a GPU worker (or the CPU)
mnist-ray evaluate --shards 4     # sharded evaluation on CPU workers
mnist-ray results                 # what the Parquet store holds
"""

__version__ = "0.1.0"
