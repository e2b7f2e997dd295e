//! Guest physical memory layout (x86_64), close to Firecracker's so guest
//! tooling written for it (boot timer at 0xC000_0000) works unchanged.

/// GDT lives in low memory, below the zero page.
pub const BOOT_GDT_OFFSET: u64 = 0x500;
/// IDT (empty, limit 0) right after the GDT.
pub const BOOT_IDT_OFFSET: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapped page tables: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Number of page directories (each maps 1 GiB): 0xb000..0xf000.
pub const PDE_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area; the MP table is written here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of the usable low memory (640 KiB).
pub const LOW_MEM_END: u64 = 0xa0000;
/// Kernels are loaded at 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO gap: [3 GiB, 4 GiB). Guest RAM is split around it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Boot-complete signal: the guest writes [`BOOT_COMPLETE_MAGIC`] here
/// (same address and value as Firecracker's boot timer).
pub const BOOT_TIMER_ADDR: u64 = MMIO_GAP_START;
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
pub const BOOT_COMPLETE_MAGIC: u8 = 123;
/// virtio-mmio device windows, one 4 KiB page each.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI handed to virtio devices (0-4 are the legacy ISA lines we use).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// IOAPIC pins available to devices.
pub const IRQ_MAX: u32 = 23;
/// Legacy devices.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const I8042_IRQ: u32 = 1;
/// KVM needs a TSS and identity map page in the 32-bit space; put them just
/// below 4 GiB where nothing else lives.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// IOAPIC / LAPIC default addresses (for the MP table).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
