# megatron.h — build the samples, run the tests, time things.
#   make            build the samples (CPU build with gcc; CUDA build too when nvcc is found)
#   make test       every CPU test, again under ASan+UBSan, and the CUDA build (CI runs this)
#   make train      train the default small GPT (GPU build when a GPU is present)
#   make test-gpu   every kernel against the CPU reference (needs a GPU)
#   make bench      kernel and training benchmarks beside the PyTorch peers (needs a GPU)
#   make gpu-check  all of the GPU work in one run: tests, trainer checks, benchmarks
#   make fuzz       60 s of libFuzzer on the dataset parsers (needs clang)

CC      := gcc
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
NVCC    ?= nvcc
CFLAGS  := -std=c11 -O2 -g -Wall -Wextra -Werror -fopenmp -I.
SANFLAGS:= -std=c11 -O1 -g -Wall -Wextra -Werror -fopenmp -I. -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDLIBS  := -lm -lpthread
CUDA_ARCH ?= -gencode=arch=compute_90a,code=sm_90a
NVFLAGS := -O3 -std=c++17 -I. $(CUDA_ARCH) -Xcompiler -fopenmp,-Wall -lineinfo
NVLIBS  := -lcublasLt -lcublas -lnccl -lm -lpthread
HAVE_NVCC := $(shell command -v $(NVCC) 2>/dev/null)

HEADERS := megatron.h $(wildcard mt/*.h) $(wildcard kernels/*.cuh)
SAMPLES := $(patsubst samples/%.c,build/%,$(wildcard samples/*.c))
TESTS   := $(patsubst tests/%.c,%,$(wildcard tests/test_*.c))
GPU_TESTS := $(patsubst tests/%.cu,build/%,$(wildcard tests/gpu_*.cu))
BENCHES := $(patsubst tests/%.cu,build/%,$(wildcard tests/bench_*.cu))

.PHONY: fuzz all samples cuda test test-cpu test-cuda-build train test-gpu bench gpu-check clean
all: samples $(if $(HAVE_NVCC),cuda)
samples: $(SAMPLES)
cuda: $(patsubst build/%,build/%_cuda,$(SAMPLES))

build/%: samples/%.c $(HEADERS)
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

build/%_cuda: samples/%.c $(HEADERS)
	@mkdir -p build
	$(NVCC) $(NVFLAGS) -x cu -o $@ $< $(NVLIBS)

build/test/%: tests/%.c tests/mt_test.h $(HEADERS)
	@mkdir -p build/test
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

build/san/%: tests/%.c tests/mt_test.h $(HEADERS)
	@mkdir -p build/san
	$(CC) $(SANFLAGS) -o $@ $< $(LDLIBS)

build/gpu_%: tests/gpu_%.cu tests/mt_test.h $(HEADERS)
	@mkdir -p build
	$(NVCC) $(NVFLAGS) -o $@ $< $(NVLIBS)

build/bench_%: tests/bench_%.cu $(HEADERS)
	@mkdir -p build
	$(NVCC) $(NVFLAGS) -o $@ $< $(NVLIBS)

# The CUDA build is compiled and linked (not run) wherever nvcc exists; it counts as one test.
test-cuda-build: $(if $(HAVE_NVCC),cuda $(GPU_TESTS) $(BENCHES))

test: $(addprefix build/test/,$(TESTS)) $(addprefix build/san/,$(TESTS)) samples
	@OMP_NUM_THREADS=2 sh tests/run_tests.sh $(addprefix build/test/,$(TESTS)) $(addprefix build/san/,$(TESTS)) \
	  $(if $(HAVE_NVCC),"@make --no-print-directory test-cuda-build","@echo no nvcc on PATH: CUDA build skipped")

train: all
	@if [ -x build/train_gpt_cuda ] && nvidia-smi -L >/dev/null 2>&1; then ./build/train_gpt_cuda; else ./build/train_gpt; fi

test-gpu: $(GPU_TESTS) all
	@sh tests/run_tests.sh $(GPU_TESTS)
	@sh tests/gpu_check.sh check

bench: $(BENCHES) all
	@sh tests/gpu_check.sh bench train-bench timing

# Everything a GPU machine should run, in one go (tests, trainer checks, benchmarks, peers);
# the multi-GPU part when 2+ GPUs are present.
gpu-check: all $(GPU_TESTS) $(BENCHES)
	@sh tests/gpu_check.sh check bench train-bench timing
	@if [ "$$(nvidia-smi -L | wc -l)" -ge 2 ]; then sh tests/gpu_multi.sh; fi

# Coverage-guided fuzzing of the .idx/.bin parser and index-cache reader (clang's libFuzzer), 60 s.
fuzz: tests/fuzz_idx.c $(HEADERS)
	@mkdir -p build/fuzz_corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I. tests/fuzz_idx.c -o build/fuzz_idx -lm -lpthread
	./build/fuzz_idx -max_total_time=60 build/fuzz_corpus

clean:
	rm -rf build
