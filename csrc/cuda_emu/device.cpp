// The torch device "cuda_emu" of the emulated-CUDA build (MDSSD_CUDA_EMU=1): torch's PrivateUse1
// backend, renamed, with its memory on the host. The real glue (csrc/cuda/*_glue.cpp) registers
// mdssd's CUDA kernels under this key (see MDSSD_CUDA_DISPATCH_KEY in csrc/cuda/launch.h), so a
// test that moves tensors to "cuda_emu" runs the same argument checks, allocations and launches
// as on a GPU, with the kernels executed by the emulator (csrc/cuda_emu/cuda_emu.h).
//
// What a backend must provide natively is here (allocation, views, copies, reading a scalar,
// device guard); every other aten op (the tests' comparisons, the reference implementations,
// torchvision) runs through torch's CPU fallback, which copies the operands to the CPU and the
// results back. mdssd's own ops never take that fallback: one without a kernel here fails loudly
// instead of silently running its CPU kernel (which would make the CUDA tests compare the CPU
// kernel with itself).
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_local_scalar_dense_native.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/copy_native.h>
#include <ATen/ops/resize_native.h>
#include <ATen/ops/set_native.h>
#include <ATen/ops/unfold_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

namespace mdssd {
namespace cuda_emu {
namespace {

constexpr c10::DeviceType kEmu = c10::DeviceType::PrivateUse1;

// Renames PrivateUse1 before any tensor can be made on it.
const bool kRenamed = [] {
  c10::register_privateuse1_backend("cuda_emu");
  return true;
}();

// Host memory, 256-byte aligned like cudaMalloc, filled with 0xA5 bytes so that a kernel reading
// an element nobody wrote sees garbage (as on a GPU) rather than zeros.
void free_device(void* p) { std::free(p); }

struct HostAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* p = nullptr;
    if (bytes > 0) {
      p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "cuda_emu: out of host memory allocating ",
                       bytes, " bytes");
      std::memset(p, 0xA5, bytes);
    }
    return {p, p, &free_device, c10::Device(kEmu, 0)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_device; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};
HostAllocator host_allocator;
REGISTER_ALLOCATOR(kEmu, &host_allocator);

// One device, one stream: the emulator runs every launch to completion on the calling thread.
struct GuardImpl final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kEmu; }
  c10::Device exchangeDevice(c10::Device d) const override {
    check(d);
    return c10::Device(kEmu, 0);
  }
  c10::Device getDevice() const override { return c10::Device(kEmu, 0); }
  void setDevice(c10::Device d) const override { check(d); }
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, c10::Device(kEmu, d.index() < 0 ? 0 : d.index()));
  }
  c10::Stream exchangeStream(c10::Stream) const override {
    return c10::Stream(c10::Stream::DEFAULT, c10::Device(kEmu, 0));
  }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {
    TORCH_CHECK(false, "cuda_emu: events are not emulated (launches are synchronous)");
  }
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}

 private:
  static void check(c10::Device d) {
    TORCH_CHECK(d.type() == kEmu && d.index() <= 0, "cuda_emu: there is one device, cuda_emu:0; got ", d);
  }
};
C10_REGISTER_GUARD_IMPL(PrivateUse1, GuardImpl);

struct Hooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  // Random numbers for tensors on the device come from the CPU generator (random ops run through
  // the CPU fallback anyway).
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    return at::detail::getDefaultCPUGenerator();
  }
  at::Device getDeviceFromPtr(void*) const override { return c10::Device(kEmu, 0); }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const override {
    at::native::resize_bytes_nocuda(storage, static_cast<int64_t>(newsize));
  }
};
const bool kHooks = [] {
  at::RegisterPrivateUse1HooksInterface(new Hooks());
  return true;
}();

// A CPU tensor over the same host memory (the device's memory is host memory): a view of the
// whole storage, so that storage offsets and views made from it map back onto the device tensor.
at::Tensor as_cpu(const at::Tensor& t) {
  if (!t.defined() || t.is_cpu()) return t;
  const int64_t elements = static_cast<int64_t>(t.storage().nbytes() / t.element_size());
  return at::from_blob(t.storage().mutable_data(), {elements}, t.options().device(at::kCPU))
      .as_strided(t.sizes(), t.strides(), t.storage_offset());
}

// What a wrapped device tensor keeps alive: the CPU storage it reads, and the device tensor that
// storage aliases, if any (a CPU alias made by as_cpu owns no memory).
struct Kept {
  c10::Storage storage;
  at::Tensor owner;
};
void free_kept(void* ctx) { delete static_cast<Kept*>(ctx); }

// A device tensor over a CPU tensor's memory, keeping that memory alive: no copy.
at::Tensor wrap_cpu(const at::Tensor& cpu, const at::Tensor& owner = at::Tensor()) {
  const c10::Storage& storage = cpu.storage();
  c10::DataPtr data(storage.mutable_data(), new Kept{storage, owner}, &free_kept,
                    c10::Device(kEmu, 0));
  c10::Storage wrapped(c10::Storage::use_byte_size_t(), storage.nbytes(), std::move(data),
                       /*allocator=*/nullptr, /*resizable=*/false);
  auto t = at::detail::make_tensor<c10::TensorImpl>(
      std::move(wrapped), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1), cpu.dtype());
  t.unsafeGetTensorImpl()->set_sizes_and_strides(cpu.sizes(), cpu.strides(), cpu.storage_offset());
  return t;
}

at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype,
                               std::optional<c10::Layout> layout, std::optional<c10::Device> device,
                               std::optional<bool> pin_memory,
                               std::optional<c10::MemoryFormat> memory_format) {
  TORCH_CHECK(c10::layout_or_default(layout) == c10::Layout::Strided,
              "cuda_emu: only strided tensors");
  TORCH_CHECK(!c10::pinned_memory_or_default(pin_memory), "cuda_emu: pinned memory is CPU only");
  (void)device;
  return at::detail::empty_generic(size, &host_allocator, c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                   c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride,
                         std::optional<c10::ScalarType> dtype, std::optional<c10::Layout> layout,
                         std::optional<c10::Device> device, std::optional<bool> pin_memory) {
  TORCH_CHECK(c10::layout_or_default(layout) == c10::Layout::Strided,
              "cuda_emu: only strided tensors");
  TORCH_CHECK(!c10::pinned_memory_or_default(pin_memory), "cuda_emu: pinned memory is CPU only");
  (void)device;
  return at::detail::empty_strided_generic(size, stride, &host_allocator,
                                           c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                           c10::dtype_or_default(dtype));
}

at::Tensor as_strided(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride,
                      std::optional<int64_t> storage_offset) {
  return at::native::as_strided_tensorimpl(self, size, stride, storage_offset);
}

const at::Tensor& resize(const at::Tensor& self, c10::IntArrayRef size,
                         std::optional<at::MemoryFormat> memory_format) {
  return at::native::resize_(self, size, memory_format);
}

at::Tensor reshape_alias(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride) {
  return at::native::_reshape_alias(self, size, stride);
}

at::Tensor view(const at::Tensor& self, c10::IntArrayRef size) {
  return at::native::view(self, size);
}

at::Tensor unfold(const at::Tensor& self, int64_t dimension, int64_t size, int64_t step) {
  return at::native::unfold(self, dimension, size, step);
}

// Copies between the device and the CPU or within the device: a CPU copy between aliases.
at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool non_blocking) {
  at::Tensor dst_cpu = as_cpu(dst);
  at::native::copy_(dst_cpu, as_cpu(self), non_blocking);
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  at::native::resize_(dst, self.sizes(), std::nullopt);
  at::Tensor dst_cpu = as_cpu(dst);
  at::native::copy_(dst_cpu, as_cpu(self), false);
  return dst;
}

at::Scalar local_scalar_dense(const at::Tensor& self) {
  return at::native::_local_scalar_dense_cpu(as_cpu(self));
}

at::Tensor& set_tensor(at::Tensor& self, const at::Tensor& source) {
  return at::native::set_tensor_(self, source);
}
at::Tensor& set_storage(at::Tensor& self, at::Storage source) {
  return at::native::set_(self, source);
}
at::Tensor& set_storage_offset(at::Tensor& self, at::Storage source, int64_t offset,
                               c10::IntArrayRef size, c10::IntArrayRef stride) {
  return at::native::set_storage_cpu_(self, source, offset, size, stride);
}

// Every aten op without a kernel here runs its CPU kernel on CPU aliases of the device tensors
// (the memory is shared: in-place and out= results land in device memory); fresh results are
// wrapped as device tensors, results that alias an argument become views of it. torch's own
// at::native::cpu_fallback copies every operand both ways (3-4x slower on the tests' large
// comparisons); it remains the fallback of this fallback, for what the aliasing path cannot do
// (an out= tensor that must grow), and MDSSD_CUDA_EMU_COPY_FALLBACK=1 selects it always.
void alias_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  auto args = torch::jit::last(*stack, num_args);
  std::vector<c10::IValue> saved(args.begin(), args.end());
  std::vector<at::Tensor> originals;  // device tensors whose CPU alias went to the kernel
  std::vector<at::Tensor> aliases;
  auto to_cpu = [&](const at::Tensor& t) {
    if (!t.defined() || t.device().type() != kEmu) return t;
    originals.push_back(t);
    aliases.push_back(as_cpu(t));
    return aliases.back();
  };
  for (size_t i = 0; i < num_args; ++i) {
    c10::IValue& v = (*stack)[stack->size() - num_args + i];
    if (v.isTensor()) {
      v = to_cpu(v.toTensor());
    } else if (v.isTensorList()) {  // new lists: c10::List shares its elements with `saved`
      c10::List<at::Tensor> list;
      for (const at::Tensor& e : v.toTensorList().vec()) list.push_back(to_cpu(e));
      v = list;
    } else if (v.isOptionalTensorList()) {
      c10::List<std::optional<at::Tensor>> list;
      for (const std::optional<at::Tensor>& e : v.toOptionalTensorList().vec())
        list.push_back(e.has_value() ? std::optional<at::Tensor>(to_cpu(*e)) : e);
      v = list;
    }
  }
  const size_t base = stack->size() - num_args;
  try {
    op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
  } catch (const c10::Error&) {
    stack->resize(base);
    for (auto& v : saved) stack->push_back(std::move(v));
    at::native::cpu_fallback(op, stack);
    return;
  }
  // Metadata changes of in-place view ops (transpose_, ...) made on an alias.
  for (size_t k = 0; k < originals.size(); ++k) {
    at::Tensor& o = originals[k];
    const at::Tensor& a = aliases[k];
    if (o.sizes() != a.sizes() || o.strides() != a.strides() || o.storage_offset() != a.storage_offset())
      o.unsafeGetTensorImpl()->set_sizes_and_strides(a.sizes(), a.strides(), a.storage_offset());
  }
  auto to_device = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined() || !t.is_cpu()) return t;
    for (size_t k = 0; k < aliases.size(); ++k) {
      if (t.is_same(aliases[k])) return originals[k];
      // A result over an argument's memory (a view): a view of the device tensor.
      if (t.storage().data() != nullptr && t.storage().data() == aliases[k].storage().data()) {
        if (t.dtype() == originals[k].dtype())
          return at::native::as_strided_tensorimpl(originals[k], t.sizes(), t.strides(), t.storage_offset());
        return wrap_cpu(t, originals[k]);
      }
    }
    return wrap_cpu(t);
  };
  const size_t num_returns = schema.returns().size();
  for (size_t i = stack->size() - num_returns; i < stack->size(); ++i) {
    c10::IValue& v = (*stack)[i];
    if (v.isTensor()) {
      v = to_device(v.toTensor());
    } else if (v.isTensorList()) {
      auto list = v.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) list.set(j, to_device(list.get(j)));
      v = list;
    }
  }
}

void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& name = op.schema().operator_name().name;
  TORCH_CHECK(name.rfind("mdssd::", 0) != 0, "cuda_emu: ", name,
              " has no kernel for the emulated CUDA device (its CUDA glue is not registered), "
              "and must not fall back to its CPU kernel");
  static const bool copy = std::getenv("MDSSD_CUDA_EMU_COPY_FALLBACK") != nullptr;
  if (copy) {
    at::native::cpu_fallback(op, stack);
  } else {
    alias_fallback(op, stack);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", &empty_memory_format);
  m.impl("empty_strided", &empty_strided);
  m.impl("as_strided", &as_strided);
  m.impl("resize_", &resize);
  m.impl("_reshape_alias", &reshape_alias);
  m.impl("view", &view);
  m.impl("unfold", &unfold);
  m.impl("_copy_from", &copy_from);
  m.impl("_copy_from_and_resize", &copy_from_and_resize);
  m.impl("_local_scalar_dense", &local_scalar_dense);
  m.impl("set_.source_Tensor", &set_tensor);
  m.impl("set_.source_Storage", &set_storage);
  m.impl("set_.source_Storage_storage_offset", &set_storage_offset);
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
}

}  // namespace cuda_emu
}  // namespace mdssd
