# The VM driver's acceleration probe (qemu.rs embeds it assembled):
#   as --64 -o p.o qemu_probe.S && ld -m elf_x86_64 -Ttext 0x7c00 --oformat binary -o p.bin p.o
# Enters long mode, writes 16..80 MiB four times, prints STRATUS-KVM-OK on COM1.
.code16
.globl _start
_start:
  cli
  xor %ax,%ax
  mov %ax,%ds
  mov %ax,%es
  mov $0x1000,%di
  mov $0x1800,%cx
  xor %ax,%ax
  cld
  rep stosw
  movl $0x2003,0x1000
  movl $0x3003,0x2000
  # PD: 512 x 2 MiB pages = 1 GiB identity
  mov $0x3000,%di
  mov $0x83,%eax
  mov $512,%cx
4: movl %eax,(%di)
  add $0x200000,%eax
  add $8,%di
  loop 4b
  mov %cr4,%eax
  or $0x20,%eax
  mov %eax,%cr4
  mov $0x1000,%eax
  mov %eax,%cr3
  mov $0xc0000080,%ecx
  rdmsr
  or $0x100,%eax
  wrmsr
  lgdtl gdtr
  mov %cr0,%eax
  or $0x80000001,%eax
  mov %eax,%cr0
  ljmpl $0x08, $lm
.code64
lm:
  # write every 64-byte line of 16..80 MiB, 4 passes
  mov $4,%r8
5: mov $0x1000000,%rdi
6: mov %rdi,(%rdi)
  add $64,%rdi
  cmp $0x5000000,%rdi
  jb 6b
  dec %r8
  jnz 5b
  mov $0x3f8,%dx
  lea msg(%rip),%rsi
1: lodsb
  test %al,%al
  jz 2f
  out %al,(%dx)
  jmp 1b
2: hlt
  jmp 2b
.p2align 3
gdt: .quad 0
  .quad 0x00af9a000000ffff
  .quad 0x00cf92000000ffff
gdtr: .word 23
  .long gdt
msg: .asciz "STRATUS-KVM-OK\n"
.org 510
.word 0xaa55
